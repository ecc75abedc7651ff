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


def test_release_advice_only_to_users_who_hold_something():
    holder = check_quota(user="a", group="g", max_gpus=2, holding=2, waiting=0, count=1)
    assert "container retire <name>` frees it at once" in holder.message
    assert "keeps it for the hold period" in holder.message
    waiter = check_quota(user="a", group="g", max_gpus=1, holding=0, waiting=1, count=1)
    assert "Release" not in waiter.message and "queued request" in waiter.message
    greedy = check_quota(user="a", group="g", max_gpus=2, holding=0, waiting=0, count=3)
    assert "Release" not in greedy.message and "at most 2 GPUs" in greedy.message
