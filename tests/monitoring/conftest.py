# The `portal` command's fixtures, for the command's part in monitoring.
from tests.portal_client.conftest import cli, cli_home  # noqa: F401
