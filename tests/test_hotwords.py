"""Hotwords (asr/pipeline/hotwords.py): parsing user text under limits; paths and URLs are words."""

from __future__ import annotations

import pytest

from asr.pipeline.hotwords import parse_hotwords


def test_parse_hotwords_limits() -> None:
    assert parse_hotwords("阿里巴巴 达摩院\n通义,千问，通义") == ("阿里巴巴", "达摩院", "通义", "千问")
    from asr.errors import HotwordError

    with pytest.raises(HotwordError, match="limit is 3"):
        parse_hotwords("a b c d", max_count=3)
    with pytest.raises(HotwordError, match="limit is 5"):
        parse_hotwords("abcdefgh", max_chars=5)
    # Paths and URLs are words like any other: nothing is read or fetched.
    assert parse_hotwords("/etc/passwd.txt https://example.com/x.txt") == (
        "/etc/passwd.txt",
        "https://example.com/x.txt",
    )

