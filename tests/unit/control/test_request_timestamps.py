"""A request's Timestamp that protobuf itself cannot read is the caller's error, not INTERNAL
(found by the hostile-input corpus: ListFineTuningUsage with nanos of -2**31)."""

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument
from services.control.api.messages import time_or_none


@pytest.mark.parametrize("ts", [Timestamp(nanos=-2**31), Timestamp(nanos=10**9),
                                Timestamp(seconds=2**62), Timestamp(seconds=-2**62)])
def test_an_unreadable_timestamp_is_invalid_argument(ts):
    with pytest.raises(InvalidArgument, match="filter.end_time is not a valid timestamp"):
        time_or_none(ts, "filter.end_time")


def test_unset_is_none_and_a_valid_one_is_read():
    assert time_or_none(Timestamp()) is None
    assert time_or_none(Timestamp(seconds=86400)).isoformat() == "1970-01-02T00:00:00+00:00"
