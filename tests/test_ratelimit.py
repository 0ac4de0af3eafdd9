from service.ratelimit import RateLimiter


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_bucket_refills_at_rate():
    clock = Clock()
    limiter = RateLimiter(10, clock)
    assert limiter.available() == 10
    limiter.take(10)
    assert limiter.available() == 0
    clock.now += 0.5
    assert limiter.available() == 5


def test_429_pauses_everything_and_recovers_gradually():
    clock = Clock()
    limiter = RateLimiter(20, clock)
    pause = limiter.rate_limited(retry_after=3)
    assert pause == 3 and limiter.available() == 0
    clock.now += 3.01
    assert limiter.effective_rate == 10
    limiter.succeeded()
    assert 10 < limiter.effective_rate < 20
    for _ in range(200):
        limiter.succeeded()
    assert limiter.effective_rate == 20


def test_429_without_retry_after_backs_off_exponentially():
    clock = Clock()
    limiter = RateLimiter(5, clock)
    pauses = []
    for _ in range(6):
        pauses.append(limiter.rate_limited(None))
        clock.now += pauses[-1] + 0.01  # each 429 answers the probe after the last pause
    assert pauses[-1] > pauses[0] and all(pause <= 60 for pause in pauses)
    assert 1 <= pauses[0] <= 2 and 30 <= pauses[5] <= 60  # capped at a minute, then jitter


def test_429s_from_requests_already_in_flight_do_not_escalate():
    clock = Clock()
    limiter = RateLimiter(0, clock)
    first = limiter.rate_limited(None)
    echoes = [limiter.rate_limited(None) for _ in range(9)]
    assert limiter.streak == 1 and all(echo <= first + 1e-9 for echo in echoes)


def test_after_a_pause_one_probe_goes_alone_until_one_succeeds():
    clock = Clock()
    limiter = RateLimiter(0, clock)
    clock.now += limiter.rate_limited(None) + 0.01
    assert limiter.available() == 1
    limiter.take()
    assert limiter.available() == 0  # the probe is out
    limiter.settled()  # it failed for another reason: another probe may go
    assert limiter.available() == 1
    limiter.take()
    limiter.succeeded()
    assert limiter.available() > 1000


def test_unlimited_rate():
    limiter = RateLimiter(0)
    assert limiter.available() > 1000 and limiter.wait() == 0
