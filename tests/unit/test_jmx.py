"""Reading the broker's meters from JmxTool's report."""

from __future__ import annotations

import pytest

from tidegate.errors import BrokerError
from tidegate.kafka.jmx import BrokerMeters, parse_jmx_output

pytestmark = pytest.mark.unit

REPORT = """time\t1796227333865
kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Fetch,version=16:Count\t120
kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Fetch,version=17:Count\t30
kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Produce,version=11:Count\t7
kafka.server:type=BrokerTopicMetrics,name=BytesInPerSec,topic=t.events:Count\t2048
kafka.server:type=BrokerTopicMetrics,name=BytesOutPerSec,topic=t.events:Count\t4096
kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=t.events:Count\t16
"""


def test_requests_sum_over_api_versions_and_topic_meters_split_by_topic() -> None:
    meters = parse_jmx_output(REPORT)
    assert meters.requests == {"Fetch": 150.0, "Produce": 7.0}
    assert meters.bytes_in == {"t.events": 2048.0}
    assert meters.bytes_out == {"t.events": 4096.0}
    assert meters.messages_in == {"t.events": 16.0}


def test_the_difference_of_two_readings_keeps_what_moved() -> None:
    earlier = BrokerMeters(requests={"Fetch": 100.0, "Produce": 7.0}, bytes_in={"t.events": 48.0})
    spent = parse_jmx_output(REPORT) - earlier
    assert spent.requests == {"Fetch": 50.0}
    assert spent.bytes_in == {"t.events": 2000.0}


def test_a_report_without_counts_is_an_error() -> None:
    with pytest.raises(BrokerError, match="unexpected JmxTool output"):
        parse_jmx_output("Trying to connect to JMX url\n")
