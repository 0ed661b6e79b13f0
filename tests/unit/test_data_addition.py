"""The synthetic addition task: a disjoint train/test split, document format, answer parsing."""

import pytest

from megatron_dllm.data.addition import AdditionTask


def test_test_problems_never_appear_in_training():
    task = AdditionTask(max_digits=2, num_test=200, seed=0)
    test = set(task.test_problems())
    assert len(test) == 200
    assert test.isdisjoint(task.train_pairs)
    assert len(test) + len(task.train_pairs) == 100 * 100
    docs = set(task.training_documents(5000))
    assert not docs & {task.document(a, b) for a, b in test}


def test_split_is_a_function_of_the_seed():
    assert AdditionTask(seed=3).test_problems() == AdditionTask(seed=3).test_problems()
    assert AdditionTask(seed=3).test_problems() != AdditionTask(seed=4).test_problems()


def test_documents_are_correct_fixed_width_sums():
    task = AdditionTask(max_digits=3, num_test=10)
    for doc in task.training_documents(300, seed=7):
        lhs, rhs = doc.split("=")
        a, b = lhs.split("+")
        assert int(a) + int(b) == int(rhs) and 0 <= int(a) < 1000 and 0 <= int(b) < 1000
        assert (len(a), len(b), len(rhs)) == (3, 3, 4)


@pytest.mark.parametrize("completion, expected", [
    ("85", 85), (" 85 and more", 85), ("85+1", 85), ("", None), ("x85", None), ("007", 7)])
def test_parse_answer(completion, expected):
    assert AdditionTask.parse_answer(completion) == expected


def test_is_correct_and_prompt():
    task = AdditionTask()
    assert task.prompt(47, 8) == "47+08="
    assert task.is_correct(47, 38, "085") and not task.is_correct(47, 38, "084")
    assert task.document(47, 8) == "47+08=055" and task.answer_tokens == 4


@pytest.mark.parametrize("kwargs", [dict(max_digits=0), dict(max_digits=1, num_test=50), dict(num_test=0)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        AdditionTask(**kwargs)
