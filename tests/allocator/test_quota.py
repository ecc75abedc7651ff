from allocator.quota import check_quota


def test_within_quota_is_allowed():
    assert check_quota(
        user="alice", group="student", max_gpus=2, holding=1, waiting=0, count=1
    ).allowed


def test_refusal_names_both_numbers():
    decision = check_quota(user="alice", group="student", max_gpus=2, holding=2, waiting=0, count=1)
    assert not decision.allowed
    assert "holds 2 of 2" in decision.message
    assert "alice" in decision.message and "student" in decision.message


def test_waiting_requests_count_against_the_quota():
    decision = check_quota(user="alice", group="student", max_gpus=2, holding=1, waiting=1, count=1)
    assert not decision.allowed
    assert "holds 1 of 2" in decision.message and "waits for 1 more" in decision.message


def test_no_limit_for_null_quota():
    assert check_quota(
        user="root", group="admin", max_gpus=None, holding=50, waiting=9, count=8
    ).allowed
