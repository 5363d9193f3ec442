"""How the Ray dispatcher classifies the Jobs API's errors (no Ray: a stand-in client)."""

import pytest

from services.control.dispatch.protocol import ClusterUnavailable, DispatchError
from services.control.dispatch.ray_jobs import RayJobDispatcher


class RefusingClient:
    def __init__(self, message):
        self.message = message

    def submit_job(self, **kwargs):
        raise RuntimeError(self.message)


def dispatcher_with(client) -> RayJobDispatcher:
    dispatcher = RayJobDispatcher("http://127.0.0.1:1", "python")
    dispatcher._client = client   # as if connected
    return dispatcher


def test_a_head_still_starting_is_unavailable_not_a_rejection():
    starting = dispatcher_with(RefusingClient(
        "Request failed with status code 500: No available agent to submit job, please try "
        "again later.."))
    with pytest.raises(ClusterUnavailable):
        starting.submit("ft_x", "file:///spec.json", {})


def test_a_rejected_entrypoint_is_a_dispatch_error():
    rejecting = dispatcher_with(RefusingClient("Request failed with status code 400: bad"))
    with pytest.raises(DispatchError) as err:
        rejecting.submit("ft_x", "file:///spec.json", {})
    assert not isinstance(err.value, ClusterUnavailable)


def test_resubmitting_a_known_job_is_not_an_error():
    dispatcher_with(RefusingClient("Job with submission_id ft_x already exists")).submit(
        "ft_x", "file:///spec.json", {})
