"""Peak memory of a worker process, in bytes on every platform."""

import resource

import psutil

from prefect_mlops.infra.dask_cluster import _peak_rss_bytes, max_rss_bytes


def test_ru_maxrss_is_bytes_on_macos_and_kibibytes_elsewhere():
    assert max_rss_bytes(3_000_000, platform="darwin") == 3_000_000
    assert max_rss_bytes(3_000, platform="linux") == 3_000 * 1024
    assert max_rss_bytes(3_000, platform="freebsd14") == 3_000 * 1024


def test_the_peak_of_this_process_is_at_least_what_it_holds_now():
    peak = _peak_rss_bytes()
    assert peak >= psutil.Process().memory_info().rss
    # The getrusage fallback, converted for this platform, agrees on the order of magnitude.
    fallback = max_rss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    assert fallback >= peak / 2
