from aki_alert.provenance import Overlap, decide

A, B = "a" * 64, "b" * 64


def test_first_start_imports():
    d = decide("auto", None, A, None, "env", None)
    assert (d.action, d.mismatch) == ("import", False)


def test_same_file_same_environment_keeps():
    d = decide("auto", A, A, "env", "env", None)
    assert (d.action, d.mismatch) == ("keep", False)


def test_newer_export_of_the_same_hospital_is_merged_without_fuss():
    d = decide("auto", A, B, "env", "env", Overlap(state_rows=100, shared=100, conflicts=0))
    assert (d.action, d.mismatch) == ("merge", False)
    # The 90-day window moved: most, not all, of the old rows are still there.
    d = decide("auto", A, B, "env", "env", Overlap(state_rows=100, shared=60, conflicts=0))
    assert d.action == "merge"


def test_another_hospitals_history_rebuilds_under_auto():
    for overlap in (Overlap(100, 0, 0), Overlap(100, 90, 1), Overlap(100, 40, 0), None):
        d = decide("auto", A, B, "env", "env", overlap)
        assert (d.action, d.mismatch) == ("rebuild", True)
        assert "history file changed" in d.reason


def test_refuse_merge_rebuild_do_as_told():
    for policy in ("refuse", "merge", "rebuild"):
        d = decide(policy, A, B, "env-a", "env-b", Overlap(100, 100, 0))
        assert (d.action, d.mismatch) == (policy, True)
        assert "environment changed from 'env-a' to 'env-b'" in d.reason


def test_unreadable_history_keeps_the_state():
    d = decide("auto", A, None, "env", "env", None)
    assert d.action == "keep"


def test_renamed_environment_with_the_same_history_is_flagged_but_kept():
    d = decide("auto", A, A, "old", "new", None)
    assert (d.action, d.mismatch) == ("keep", True)
