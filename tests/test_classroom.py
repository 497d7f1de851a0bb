"""The classroom pipeline: otter assign, then grade solution, blank and wrong submissions with otter run."""

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("otter", reason="otter-grader is not installed: pip install -e '.[course]'")

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("classroom_build", ROOT / "classroom" / "build.py")
classroom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(classroom)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every assignment built (and its solution edition graded) into a fresh folder."""
    return classroom.build(out=tmp_path_factory.mktemp("classroom"), check=True)


def test_every_assignment_is_built():
    assert classroom.assignment_names() == ["01_vae_mnist", "02_cvae_mnist", "04_cvae_cifar10"]


def test_student_editions_hold_no_solution_and_no_hidden_test(built):
    for name, paths in built.items():
        text = paths["student"].read_text()
        assert classroom.leaks(paths["student"], classroom.SOURCES / f"{name}.md") == []
        assert "otter_answer_cell" in text, f"{name}: the student edition has no answer cell"
        assert "grader.check(" in text, f"{name}: the student edition cannot run its public tests"
    student = built["01_vae_mnist"]["student"].read_text()
    assert "torch.exp(0.5 * logvar) * torch.randn_like(mu)" not in student
    assert "test_shape_and_type" in student, "the public tests travel with the student edition"
    assert "test_gradients" not in student and "test_moments_match_cvaelib" not in student


def test_leak_check_catches_a_solution_edition(built):
    paths = built["01_vae_mnist"]
    found = classroom.leaks(paths["solution"], classroom.SOURCES / "01_vae_mnist.md")
    assert any("solution line" in item for item in found) and any("hidden test" in item for item in found)


def test_solution_editions_score_full_marks(built):
    for name, paths in built.items():
        results = json.loads(paths["results"].read_text())
        assert results["possible"] >= 7 and len(results["questions"]) == 3, name
        assert results["score"] == results["possible"], (name, classroom.failing_questions(results))


def test_blank_and_wrong_submissions_lose_points_and_name_the_question(built, tmp_path):
    paths = built["01_vae_mnist"]
    solution = paths["solution"].read_text()
    # One function broken: sigma = exp(logvar) instead of exp(0.5 * logvar).
    wrong = tmp_path / "wrong" / "01_vae_mnist.ipynb"
    wrong.parent.mkdir()
    wrong.write_text(
        solution.replace("torch.exp(0.5 * logvar) * torch.randn_like(mu)", "torch.exp(logvar) * torch.randn_like(mu)")
    )
    assert wrong.read_text() != solution
    with ThreadPoolExecutor(2) as pool:
        wrong_results, blank_results = pool.map(
            lambda nb: classroom.grade(nb, paths["autograder"]), [wrong, paths["student"]]
        )

    assert 0 < wrong_results["score"] < wrong_results["possible"]
    assert classroom.failing_questions(wrong_results) == ["q1_reparameterize"]
    assert "dz/dlogvar must be 0.5 * sigma * eps" in wrong_results["questions"]["q1_reparameterize"]["output"]

    assert blank_results["score"] == 0 and blank_results["possible"] == wrong_results["possible"]
    assert classroom.failing_questions(blank_results) == ["q1_reparameterize", "q2_gaussian_kl", "q3_negative_elbo"]
