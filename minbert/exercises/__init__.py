"""The course kit: exercises marked in the solution, a student copy made from it, and a
grader that runs each exercise's tests (docs/TEACHING.md).

    python -m minbert.exercises list
    python -m minbert.exercises make DIR [--only ID,...]
    python -m minbert.exercises check [ID ...] [--json results.json]

This package imports nothing of minbert's: a student's stubbed module imports
ExerciseNotImplemented from here while the package is still loading.
"""
from minbert.exercises.registry import EXERCISES, TOUR, Exercise, exercises_of

__all__ = ["EXERCISES", "Exercise", "ExerciseNotImplemented", "exercises_of"]


class ExerciseNotImplemented(NotImplementedError):
    """Raised by an exercise's stub in the student copy until the student writes it."""

    def __init__(self, exercise: str):
        self.exercise = exercise
        e = EXERCISES[exercise]
        super().__init__(
            f"exercise {exercise!r} is not done yet: write {e.where} ({e.paper}: {e.equation}); "
            f"read {TOUR}, section {e.section}; check it with `python -m minbert.exercises check {exercise}`")
