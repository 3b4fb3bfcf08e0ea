"""SemVer sets no bound on a version's parts; the portal's limit is said as a limit."""

import pytest

from registry import semver
from registry.models import ModelVersion
from tests.factories import register

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("version", ["1234567890.0.0", "1.0.99999999999999999999"])
def test_a_part_over_nine_digits_is_refused_with_the_limit(api, member, iris_model, iris_file, version):
    response = register(api(member), "iris", iris_file, version=version)
    assert response.status_code == 400, response.content
    body = response.json()
    assert "at most 9 digits (the portal's limit)" in body["detail"]
    assert "not a semantic version" not in body["detail"]
    assert "version" in body["errors"]
    assert ModelVersion.objects.count() == 0


def test_nine_digits_are_accepted_and_stored_whole(api, member, iris_model, iris_file):
    response = register(api(member), "iris", iris_file, version="999999999.999999999.999999999")
    assert response.status_code == 201, response.content
    stored = ModelVersion.objects.get()
    assert (stored.major, stored.minor, stored.patch) == (999_999_999,) * 3
    assert semver.parse("999999999.0.0") == (999_999_999, 0, 0)


@pytest.mark.parametrize("version", ["01.0.0", "1.0", "1.0.0-beta"])
def test_what_is_not_semver_still_says_so(version):
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="is not a semantic version"):
        semver.parse(version)
