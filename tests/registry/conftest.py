from __future__ import annotations

import pytest

from registry import services


@pytest.fixture
def iris_model(team, owner):
    """Model 'iris' of team 'vision', with no version yet."""
    return services.registered_model_create(actor=owner, name="iris", team=team, description="Iris **species**.")
