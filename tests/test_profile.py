import pytest
import torch

from cvaelib.profile import describe, pick, profile, train_exercises


def test_unset_profile_depends_on_the_machine(monkeypatch):
    monkeypatch.delenv("CVAELIB_PROFILE", raising=False)
    for gpu, expected in ((True, "full"), (False, "smoke")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        assert profile() == expected and pick(1, 2) == (2 if gpu else 1)
        assert describe().startswith(f"profile: {expected} (")
    assert "CVAELIB_PROFILE=full runs the full one" in describe()


def test_the_variable_forces_a_profile(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CVAELIB_PROFILE", "Full")
    assert profile() == "full" and describe() == "profile: full (set by CVAELIB_PROFILE)"
    monkeypatch.setenv("CVAELIB_PROFILE", "smoke")
    assert pick({"epochs": 1}, {"epochs": 20}) == {"epochs": 1}


def test_unknown_profile_is_rejected(monkeypatch):
    monkeypatch.setenv("CVAELIB_PROFILE", "fast")
    with pytest.raises(ValueError, match="CVAELIB_PROFILE='fast' is not a profile; use one of"):
        profile()


def test_exercise_training_runs_only_when_asked(monkeypatch):
    monkeypatch.delenv("CVAELIB_EXERCISES", raising=False)
    assert not train_exercises()  # "Run all" in JupyterLab
    monkeypatch.setenv("CVAELIB_EXERCISES", "0")
    assert not train_exercises()
    monkeypatch.setenv("CVAELIB_EXERCISES", "1")  # the tests, the book build, the recorded runs
    assert train_exercises()
