"""The Debian mirror the base image is built from: this machine's own apt sources, not an
address written into the code."""

from deployments.runtime.images import host_debian_mirror


def test_the_mirror_comes_from_deb822_sources_skipping_security_updates_and_disabled_ones(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.com/security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://old.example.com/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb deb-src\nURIs: https://apt.corp.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text("deb http://nope.example/debian bookworm main\n")
    assert host_debian_mirror(tmp_path) == "https://apt.corp.example/debian"


def test_the_mirror_comes_from_one_line_sources_with_options(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# the company's mirror\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://apt.corp.example/debian bookworm main\n"
    )
    assert host_debian_mirror(tmp_path) == "http://apt.corp.example/debian"


def test_no_mirror_for_the_suite_is_none(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    assert host_debian_mirror(tmp_path) is None
    assert host_debian_mirror(tmp_path / "missing") is None
