"""A headless Chromium driven by Selenium, for the inspector's end-to-end tests and its doc
screenshots (``docs/screenshots.py``). Debian's ``chromium`` and ``chromium-driver`` packages
(``.ci/run`` installs them) and ``pip install selenium``; nothing is downloaded (Selenium
Manager is never asked for a driver: both paths are given)."""

import importlib.util
import shutil


def find_browser():
    """``(chromium, chromedriver)`` paths, or None when either (or Selenium) is missing."""
    if importlib.util.find_spec("selenium") is None:
        return None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def start_browser(width=1400, height=1800):
    """A headless Chrome WebDriver (``quit()`` it), or None when no browser is installed."""
    found = find_browser()
    if found is None:
        return None
    from selenium import webdriver
    chromium, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


def wait_for(driver, condition, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, seconds).until(condition)
