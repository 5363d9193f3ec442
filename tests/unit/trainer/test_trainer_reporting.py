import grpc

from finetune.control.v1 import internal_pb2
from services.trainer.reporting import NullReporter, Progress, ProgressReporter, connect


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeControl:
    def __init__(self):
        self.requests = []
        self.fail = False
        self.cancel = False

    def __call__(self, request):
        if self.fail:
            raise _Unavailable()
        self.requests.append(request)
        return internal_pb2.ReportProgressResponse(cancelled=self.cancel)


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection refused"


def make(control, clock):
    return ProgressReporter("ft_1", control, min_interval_s=1.0, backoff_s=30.0, clock=clock)


def test_reports_are_rate_limited_but_forced_ones_always_go():
    control, clock = FakeControl(), FakeClock()
    reporter = make(control, clock)
    reporter.report(Progress(0.1, step=1))
    clock.now += 0.4
    reporter.report(Progress(0.2, step=2))                 # dropped: too soon
    reporter.report(Progress(0.25, epoch=1, step=2, validation_loss=1.5), force=True)
    clock.now += 1.0
    reporter.report(Progress(0.3, step=3))
    assert [r.step for r in control.requests] == [1, 2, 3]
    assert control.requests[1].has_validation_loss and control.requests[1].validation_loss == 1.5
    assert not control.requests[0].has_validation_loss


def test_a_forced_report_does_not_hold_back_the_next_step():
    control, clock = FakeControl(), FakeClock()
    reporter = make(control, clock)
    reporter.report(Progress(0.0, message="training precision bf16"), force=True)
    clock.now += 0.1
    reporter.report(Progress(0.1, step=1))
    clock.now += 0.1
    reporter.report(Progress(0.2, step=2))                 # dropped: 0.1 s after step 1
    assert [r.step for r in control.requests] == [0, 1]


def test_request_carries_every_field():
    control, clock = FakeControl(), FakeClock()
    make(control, clock).report(Progress(1.7, epoch=2, step=9, total_steps=10, trained_tokens=512,
                                         training_loss=0.25, message="m"))
    r = control.requests[0]
    assert (r.job_id, r.progress, r.epoch, r.step, r.total_steps, r.trained_tokens,
            r.training_loss, r.message) == ("ft_1", 1.0, 2, 9, 10, 512, 0.25, "m")


def test_failures_are_swallowed_and_pause_non_forced_reports():
    control, clock = FakeControl(), FakeClock()
    reporter = make(control, clock)
    control.fail = True
    reporter.report(Progress(0.1, step=1))                 # fails, must not raise
    control.fail = False
    clock.now += 5
    reporter.report(Progress(0.2, step=2))                 # paused after the failure
    reporter.report(Progress(0.3, step=3), force=True)     # epoch ends still try
    clock.now += 31
    reporter.report(Progress(0.4, step=4))
    assert [r.step for r in control.requests] == [3, 4]


def test_cancelled_is_remembered():
    control, clock = FakeControl(), FakeClock()
    reporter = make(control, clock)
    reporter.report(Progress(0.1))
    assert not reporter.cancelled
    control.cancel = True
    clock.now += 2
    reporter.report(Progress(0.2))
    control.cancel = False
    clock.now += 2
    reporter.report(Progress(0.3))
    assert reporter.cancelled


def test_no_control_address_means_no_reporting():
    reporter = connect("", "token", "ft_1")
    assert isinstance(reporter, NullReporter)
    reporter.report(Progress(0.5), force=True)
    assert reporter.cancelled is False
