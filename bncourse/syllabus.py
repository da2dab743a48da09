"""The syllabus: one source for the README's table, lesson 00 and the course website.

`LESSONS` lists every lesson the course plans, in order; `syllabus(root)` says which are ready
(their notebook exists in `notebooks/`) and which have a graded exercise (in `exercises/`), and
`markdown_table(root)` renders the table the README shows (a test keeps the two equal).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Lesson", "LESSONS", "syllabus", "markdown_table"]


@dataclass(frozen=True)
class Lesson:
    """One row of the syllabus: `number` "00".."12", the notebook's file stem, a one-line topic."""

    number: str
    stem: str
    topic: str
    exercise: str | None = None  # the exercise notebook's file name, if the lesson is graded
    status: str = "planned"  # "ready" when the notebook exists (set by `syllabus`)

    @property
    def notebook(self) -> str:
        return f"{self.stem}.ipynb"


LESSONS: tuple[Lesson, ...] = (
    Lesson("00", "00_start_here", "start here: how the course works, set-up, grading and the certificate"),
    Lesson("01", "01_why_normalize", "why normalize: conditioning, saturation, activation diagnostics"),
    Lesson("02", "02_forward", "the forward pass", "02_forward_exercises.ipynb"),
    Lesson("03", "03_backward", "the backward pass", "03_backward_exercises.ipynb"),
    Lesson("04", "04_torch_module", "BN as a torch module", "04_torch_module_exercises.ipynb"),
    Lesson("05", "05_inference_and_deployment", "inference and deployment",
           "05_inference_exercises.ipynb"),
    Lesson("06", "06_case_image", "case study: image recognition (Ioffe & Szegedy 2015: Figure 1 "
           "and the Inception table in miniature)", "06_case_image_exercises.ipynb"),
    Lesson("07", "07_why_bn_works", "why BN works: internal covariate shift tested, smoothness, "
           "scale invariance, learning-rate tolerance", "07_why_bn_works_exercises.ipynb"),
    Lesson("08", "08_case_nlp", "case study: NLP, BN in recurrent nets (BN-LSTM) vs LayerNorm",
           "08_case_nlp_exercises.ipynb"),
    Lesson("09", "09_case_rl", "case study: reinforcement learning (DQN pitfalls, a CrossQ-style "
           "BN critic)", "09_case_rl_exercises.ipynb"),
    Lesson("10", "10_variants_small_batch", "variants and small batches: GroupNorm, Batch Renorm, "
           "Ghost BN", "10_variants_small_batch_exercises.ipynb"),
    Lesson("11", "11_distributed_bn", "distributed (synchronised) BN on torch.distributed",
           "11_distributed_bn_exercises.ipynb"),
    Lesson("12", "12_capstone", "capstone: BN for a layout the course did not show, end to end",
           "12_capstone_exercises.ipynb"),
)


def syllabus(root) -> list[Lesson]:
    """Every lesson with its status read off the course folder `root`: "ready" when
    `notebooks/<stem>.ipynb` exists; `exercise` kept only when `exercises/<exercise>` exists."""
    root = Path(root)
    if not (root / "notebooks").is_dir():
        raise ValueError(f"root must be the course folder (holding notebooks/), got {str(root)!r}")
    rows = []
    for lesson in LESSONS:
        ready = (root / "notebooks" / lesson.notebook).is_file()
        graded = lesson.exercise is not None and (root / "exercises" / lesson.exercise).is_file()
        rows.append(Lesson(lesson.number, lesson.stem, lesson.topic,
                           lesson.exercise if graded else None, "ready" if ready else "planned"))
    return rows


def markdown_table(root) -> str:
    """The README's syllabus table (Markdown), from `syllabus(root)`."""
    lines = ["| # | lesson | graded exercise | status |", "|---|---|---|---|"]
    for lesson in syllabus(root):
        exercise = f"`exercises/{lesson.exercise}`" if lesson.exercise else "-"
        lines.append(f"| {lesson.number} | {lesson.topic} | {exercise} | {lesson.status} |")
    return "\n".join(lines) + "\n"
