"""The promotion gate: whether a version's evaluation lets it replace the champion (the
promote step and the rollout controller, which imports it without MLflow)."""

# the verdicts of steps.evaluate that let a version through
PASSING_VERDICTS = ("better", "within_tolerance", "no_champion")


def gate(tags: dict[str, str], force: bool) -> tuple[bool, str]:
    """Whether the evaluation tags let the version through, and why."""
    if force:
        return True, "forced"
    outcome = tags.get("verdict")
    if outcome is None:
        return False, "not evaluated: run the evaluate step first (or force)"
    if outcome not in PASSING_VERDICTS:
        return False, (
            f"verdict {outcome!r}: test MAE {tags.get('test_mae')} vs champion "
            f"{tags.get('champion_test_mae')} on the same rows"
        )
    return True, f"verdict {outcome!r}"
