"""The classroom pipeline: otter assign, then grade solution, blank, wrong and delegating submissions with otter run."""

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

ASSIGNMENTS = ["01_vae_mnist", "02_cvae_mnist", "03_cvae_fashion_mnist", "04_cvae_cifar10", "05_structured_output"]

# Submissions made from a solution edition by replacing solution lines: (assignment, [(old, new), ...]).
EDITED = {
    # One function broken: sigma = exp(logvar) instead of exp(0.5 * logvar); and one decision that does not follow
    # the submission's own measurements: its rates are right, but its rule never says "lowered" (the six rates of
    # q4 differ by far more than their seed-to-seed spread, so the right verdict is "beta 4 lowered the rate").
    "wrong": (
        "01_vae_mnist",
        [
            ("torch.exp(0.5 * logvar) * torch.randn_like(mu)", "torch.exp(logvar) * torch.randn_like(mu)"),
            ("if rate_interval.high < 0:", "if rate_interval.high < -1e9:"),
        ],
    ),
    # Right values, but from the library functions the questions ask for, under other names: q1 through
    # GroupStats.z (cvaelib's reparameterised sample), q2 through an alias of cvaelib.losses.gaussian_kl.
    "delegating": (
        "01_vae_mnist",
        [
            (
                "return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)",
                "from cvaelib.losses import GroupStats as G; return G(mu, logvar, None, None, torch.randn_like(mu)).z",
            ),
            (
                "return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)",
                "from cvaelib.losses import gaussian_kl as kl; return kl(mu, logvar)",
            ),
        ],
    ),
    # torch's own one-hot (a builtin, no Python code) under another name, after the answer's own label check.
    "delegating_to_torch": (
        "02_cvae_mnist",
        [
            (
                "code = torch.zeros(len(y), num_classes)",
                "from torch.nn.functional import one_hot as oh; return oh(y, num_classes).float()",
            )
        ],
    ),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every assignment built (and its solution edition graded) into a fresh folder."""
    return classroom.build(out=tmp_path_factory.mktemp("classroom"), check=True)


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory):
    """Every blank student edition and every ``EDITED`` submission, graded: {"blank": {name: results}, label: ...}."""
    folder = tmp_path_factory.mktemp("submissions")
    jobs = {("blank", name): (built[name]["student"], built[name]["autograder"]) for name in built}
    for label, (name, replacements) in EDITED.items():
        text = built[name]["solution"].read_text()
        for old, new in replacements:
            assert old in text, f"{name}: no solution line {old!r} to replace"
            text = text.replace(old, new)
        submission = folder / label / f"{name}.ipynb"
        submission.parent.mkdir()
        submission.write_text(text)
        jobs[label, name] = (submission, built[name]["autograder"])
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(jobs, pool.map(lambda job: classroom.grade(*job), jobs.values())))
    graded = {"blank": {name: r for (label, name), r in results.items() if label == "blank"}}
    graded.update({label: r for (label, _), r in results.items() if label != "blank"})
    return graded


def test_every_assignment_is_built():
    assert classroom.assignment_names() == ASSIGNMENTS


def test_student_editions_hold_no_solution_and_no_hidden_test(built):
    assert sorted(built) == ASSIGNMENTS
    for name, paths in built.items():
        text = paths["student"].read_text()
        assert classroom.leaks(paths["student"], classroom.SOURCES / f"{name}.md") == []
        assert "otter_answer_cell" in text, f"{name}: the student edition has no answer cell"
        assert "grader.check(" in text, f"{name}: the student edition cannot run its public tests"
        assert "__code__" not in text, f"{name}: the student edition shows how delegation is detected"
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
        # questions that build a piece of the chapter, then at least two that train or measure the student's own
        # models and decide, graded against the student's own numbers
        assert results["possible"] >= 9 and len(results["questions"]) >= 5, name
        assert results["score"] == results["possible"], (name, classroom.failing_questions(results))


def test_blank_submissions_score_nothing(built, graded):
    for name, results in graded["blank"].items():
        solution = json.loads(built[name]["results"].read_text())
        assert results["score"] == 0 and results["possible"] == solution["possible"], name
        assert classroom.failing_questions(results) == list(solution["questions"]), name


def test_a_wrong_submission_loses_points_and_names_the_question(graded):
    wrong = graded["wrong"]
    assert 0 < wrong["score"] < wrong["possible"]
    assert classroom.failing_questions(wrong) == ["q1_reparameterize", "q4_rate_and_beta"]
    assert "dz/dlogvar must be 0.5 * sigma * eps" in wrong["questions"]["q1_reparameterize"]["output"]
    # the measured rates still score; the verdict that does not follow them does not
    q4 = wrong["questions"]["q4_rate_and_beta"]
    assert 0 < q4["score"] < q4["possible"]
    assert "your rates give the paired interval" in q4["output"] and "beta 4 lowered the rate" in q4["output"]


def test_delegating_to_the_library_scores_nothing_for_that_question(graded):
    # Aliases do not help: the hidden tests swap the code of the library's function objects themselves.
    delegating = graded["delegating"]
    assert classroom.failing_questions(delegating) == ["q1_reparameterize", "q2_gaussian_kl"]
    questions = delegating["questions"]
    assert questions["q1_reparameterize"]["score"] == 0 and questions["q2_gaussian_kl"]["score"] == 0
    assert questions["q3_negative_elbo"]["score"] == questions["q3_negative_elbo"]["possible"]
    q1 = "q1 must draw the sample itself: it called cvaelib.losses.GroupStats.z"
    q2 = "q2 must compute the KL itself: it called cvaelib.losses.gaussian_kl"
    assert q1 in questions["q1_reparameterize"]["output"] and q2 in questions["q2_gaussian_kl"]["output"]

    # torch's one-hot is watched through torch's function dispatch; encoder_input uses that one_hot, so it fails too.
    to_torch = graded["delegating_to_torch"]
    assert classroom.failing_questions(to_torch) == ["q1_one_hot", "q2_encoder_input"]
    assert to_torch["questions"]["q1_one_hot"]["score"] == 0
    message = "q1 must build the one-hot code itself: it called torch.nn.functional.one_hot"
    assert message in to_torch["questions"]["q1_one_hot"]["output"]
    assert message in to_torch["questions"]["q2_encoder_input"]["output"]
