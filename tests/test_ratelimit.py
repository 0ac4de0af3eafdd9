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
    pauses = [limiter.rate_limited(None) for _ in range(4)]
    assert pauses[-1] > pauses[0]
    assert all(pause <= 60 for pause in pauses)


def test_unlimited_rate():
    limiter = RateLimiter(0)
    assert limiter.available() > 1000 and limiter.wait() == 0
