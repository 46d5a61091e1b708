"""Headless Chromium for the browser tests (selenium + the system's chromium/chromedriver)."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver")

# What PROTOCOL.md asks of every headless run: no sandbox or GPU, no background traffic.
QUIET = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

# Every host but 127.0.0.1 unreachable: other names resolve to nothing, and any address that
# is not loopback goes to a proxy port nothing listens on.
OFFLINE = (
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
)


def chromium(profile: Path, *args: str):
    """A selenium driver for headless Chromium with a fresh profile and extra `args`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*QUIET, *args, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
