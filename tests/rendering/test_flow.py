"""The viewer's message budget: a token bucket counted at arrival."""

from rendering.flow import MessageBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_up_to_its_size_then_messages_are_dropped():
    clock = Clock()
    budget = MessageBudget(rate=120, burst=240, clock=clock)
    taken = sum(budget.take() for _ in range(500))
    assert taken == 240 and budget.dropped == 260


def test_tokens_come_back_at_the_rate():
    clock = Clock()
    budget = MessageBudget(rate=100, burst=10, clock=clock)
    assert sum(budget.take() for _ in range(10)) == 10
    assert not budget.take()
    clock.now += 0.055
    assert sum(budget.take() for _ in range(10)) == 5
    clock.now += 60
    assert sum(budget.take() for _ in range(50)) == 10, "never more than the burst"


def test_the_client_is_told_at_most_once_a_second_and_how_long_to_wait():
    clock = Clock()
    budget = MessageBudget(rate=100, burst=1, clock=clock)
    budget.take()
    assert budget.retry_after_ms() == 10
    assert budget.notice_due() and not budget.notice_due()
    clock.now += 0.5
    assert not budget.notice_due()
    clock.now += 0.6
    assert budget.notice_due()
