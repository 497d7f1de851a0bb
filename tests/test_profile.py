import pytest

from cvaelib.profile import pick, profile


def test_profile_defaults_to_full(monkeypatch):
    monkeypatch.delenv("CVAELIB_PROFILE", raising=False)
    assert profile() == "full" and pick(1, 2) == 2


def test_smoke_profile(monkeypatch):
    monkeypatch.setenv("CVAELIB_PROFILE", "Smoke")
    assert pick({"epochs": 1}, {"epochs": 20}) == {"epochs": 1}


def test_unknown_profile_is_rejected(monkeypatch):
    monkeypatch.setenv("CVAELIB_PROFILE", "fast")
    with pytest.raises(ValueError, match="CVAELIB_PROFILE='fast' is not a profile; use one of"):
        profile()
