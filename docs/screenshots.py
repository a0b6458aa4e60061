"""Regenerate the inspector's screenshots in docs/images (docs/inspector.md shows them).

    python -m scratchlm train transformer                     # the main job: runs/gpt.npz
    python -m scratchlm train lstm --time 60 --out runs/lstm.npz
    python docs/screenshots.py --checkpoint runs/gpt.npz --rnn runs/lstm.npz

Needs a headless Chromium and Selenium (tests/browser.py: Debian's ``chromium`` and
``chromium-driver``, ``pip install selenium``). Each page is served on 127.0.0.1 by
:class:`scratchlm.inspector.server.InspectorServer`, a prompt typed and inspected, and the
panels captured as PNGs.
"""

import argparse
import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from browser import start_browser, wait_for  # noqa: E402


def _serve(path):
    from scratchlm.inspector.server import InspectorServer
    from scratchlm.training import load_model
    model, tok, _, _ = load_model(path)
    server = InspectorServer(model, tok, path, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _inspect(driver, url, prompt):
    from selenium.webdriver.common.by import By
    driver.get(url)
    wait_for(driver, lambda d: "parameters" in d.find_element(By.ID, "model-info").text)
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    driver.find_element(By.ID, "inspect-btn").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "top1") and
             d.find_element(By.ID, "status").text == "")


def _shot(driver, css, path):
    from selenium.webdriver.common.by import By
    if not driver.find_element(By.CSS_SELECTOR, css).screenshot(path):
        sys.exit(f"could not write {path}")
    print("wrote", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/gpt.npz")
    p.add_argument("--rnn", default=None, help="an RNN/LSTM/GRU checkpoint for its views")
    p.add_argument("--prompt", default="The function returns the value of the ")
    p.add_argument("--out", default=os.path.join(HERE, "images"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    driver = start_browser(width=1300, height=2200)
    if driver is None:
        sys.exit("no headless browser: apt install chromium chromium-driver; pip install selenium")
    from selenium.webdriver.common.by import By
    try:
        server = _serve(args.checkpoint)
        _inspect(driver, server.url, args.prompt)
        driver.find_element(By.CSS_SELECTOR, '#attn-thumbs figure[data-layer="2"]'
                                             '[data-head="1"]').click()
        _shot(driver, "#transformer-views > .panel", os.path.join(args.out,
                                                                  "inspector-attention.png"))
        _shot(driver, "#transformer-views > .row", os.path.join(args.out,
                                                                "inspector-contributions.png"))
        _shot(driver, "#lens", os.path.join(args.out, "inspector-lens.png"))
        driver.set_window_size(1300, 1000)
        driver.execute_script("window.scrollTo(0, 0)")
        if not driver.save_screenshot(os.path.join(args.out, "inspector.png")):
            sys.exit(f"could not write {os.path.join(args.out, 'inspector.png')}")
        print("wrote", os.path.join(args.out, "inspector.png"))
        server.shutdown()
        if args.rnn:
            driver.set_window_size(1300, 2200)
            server = _serve(args.rnn)
            _inspect(driver, server.url, args.prompt)
            _shot(driver, "#rnn-views", os.path.join(args.out, "inspector-lstm.png"))
            server.shutdown()
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
