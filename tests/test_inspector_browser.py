"""The inspector's page in a real browser (headless Chromium via Selenium): what it shows is what
the Python API computes. Skipped when no browser is installed (see tests/browser.py)."""

import threading

import numpy as np
import pytest

from browser import start_browser, wait_for
from scratchlm.data.tokenizers import build_tokenizer
from scratchlm.inspector import inspect_prompt
from scratchlm.inspector.server import InspectorServer, export_page
from scratchlm.models import GPT, RNNLM, GPTConfig

TEXT = "the cat sat on the mat; a dog ran far\n"
PROMPT = "the dog sat"


@pytest.fixture(scope="module")
def driver():
    d = start_browser()
    if d is None:
        pytest.skip("no headless browser: apt install chromium chromium-driver; pip install "
                    "selenium")
    yield d
    d.quit()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("char", TEXT, 0)


def _serve(model, tok):
    server = InspectorServer(model, tok, "tiny.npz", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def gpt_server(tok):
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2,
                          n_embd=16), dtype=np.float32, rng=2)    # (its top-1 is no special token)
    server = _serve(model, tok)
    yield server
    server.shutdown()
    server.server_close()


def _by(css):
    from selenium.webdriver.common.by import By
    return By.CSS_SELECTOR, css


def _type_and_inspect(driver, text):
    box = driver.find_element(*_by("#prompt"))
    box.clear()
    box.send_keys(text)
    driver.find_element(*_by("#inspect-btn")).click()


def _rendered(driver, prompt):
    """Wait until the page shows the tokens of ``prompt``."""
    wait_for(driver, lambda d: len(d.find_elements(*_by("#tokens .tok"))) == len(prompt) and
             d.find_element(*_by("#status")).text == "")


def test_the_page_shows_what_the_api_computes(driver, gpt_server, tok, tmp_path):
    driver.get(gpt_server.url)
    wait_for(driver, lambda d: "2 layers x 2 heads" in d.find_element(*_by("#model-info")).text)
    _type_and_inspect(driver, PROMPT)
    _rendered(driver, PROMPT)
    api = inspect_prompt(gpt_server.model, tok, PROMPT)
    top1 = driver.find_element(*_by("#top1"))
    assert int(top1.get_attribute("data-id")) == api["next"]["top"][0]["id"]
    assert float(top1.get_attribute("data-prob")) == api["next"]["top"][0]["prob"]
    # layer 1, head 1 by its thumbnail; one attention weight read off the map
    driver.find_element(*_by('#attn-thumbs figure[data-layer="1"][data-head="1"]')).click()
    cell = driver.find_element(*_by('#attn-map td[data-q="7"][data-k="2"]'))
    assert float(cell.get_attribute("data-w")) == api["attention"][1][1][7][2]
    # hovering reads the weight out in words
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(driver).move_to_element(cell).perform()
    readout = driver.find_element(*_by("#attn-readout")).text
    assert "layer 1, head 1" in readout and "(t=7)" in readout and "(t=2)" in readout
    # the saliency colours and the logit lens come from the same numbers
    toks = driver.find_elements(*_by("#tokens .tok"))
    assert [float(t.get_attribute("data-saliency")) for t in toks] == \
        api["saliency"]["grad_norm"]
    lens = driver.find_element(*_by('#lens td[data-layer="2"][data-t="3"]'))
    assert "\n" not in lens.text and lens.get_attribute("title").startswith(
        '"' + api["logit_lens"][2][3][0]["text"] + '"')
    # token text that looks like markup is shown as text, never parsed
    assert "<unk>" in [t["text"] for t in api["next"]["top"]]           # (this model, prompt)
    assert "<unk>" in [c.text for c in driver.find_elements(*_by("#next td.token"))]
    assert not driver.find_elements(*_by("unk"))
    driver.save_screenshot(str(tmp_path / "inspector.png"))
    assert (tmp_path / "inspector.png").stat().st_size > 10_000


def test_choosing_a_target_and_sampling(driver, gpt_server, tok):
    driver.get(gpt_server.url)
    _type_and_inspect(driver, PROMPT)
    _rendered(driver, PROMPT)
    second = driver.find_elements(*_by("#next tbody tr"))[1]
    target = int(second.get_attribute("data-id"))
    second.click()
    wait_for(driver, lambda d: d.find_element(*_by("#target-id")).text == str(target))
    api = inspect_prompt(gpt_server.model, tok, PROMPT, target=target)
    assert f"{api['contributions']['logit']:.3f}" in \
        driver.find_element(*_by("#contributions")).text
    # temperature 0: the model's most likely token, appended, and the page inspected again
    temperature = driver.find_element(*_by("#temperature"))
    temperature.clear()
    temperature.send_keys("0")
    top1 = api["next"]["top"][0]
    assert top1["text"] not in tok.special_tokens             # (this model, this prompt)
    driver.find_element(*_by("#sample-btn")).click()
    wait_for(driver, lambda d: len(d.find_elements(*_by("#tokens .tok"))) == len(PROMPT) + 1)
    assert driver.find_element(*_by("#prompt")).get_attribute("value") == PROMPT + top1["text"]


def test_bad_prompts_are_said_in_the_page(driver, gpt_server):
    driver.get(gpt_server.url)
    _type_and_inspect(driver, "a" * 20)
    wait_for(driver, lambda d: d.find_element(*_by("#error")).is_displayed())
    assert "the prompt is 20 tokens; the model reads at most 16" in \
        driver.find_element(*_by("#error")).text
    _type_and_inspect(driver, "the #cat")
    wait_for(driver, lambda d: "'#'" in d.find_element(*_by("#error")).text)


def test_an_rnn_and_an_exported_page(driver, tok, tmp_path):
    model = RNNLM(tok.vocab_size, 8, 12, cell="lstm", num_layers=2, rng=0)
    server = _serve(model, tok)
    try:
        driver.get(server.url)
        _type_and_inspect(driver, PROMPT)
        _rendered(driver, PROMPT)
        assert len(driver.find_elements(*_by("#rnn-maps canvas"))) == 5       # h and i, f, g, o
        assert len(driver.find_elements(*_by("#hgrad circle"))) == 2 * len(PROMPT)
    finally:
        server.shutdown()
        server.server_close()
    # the exported page works from a file, with no server behind it
    api = inspect_prompt(model, tok, PROMPT)
    page = export_page(api, tmp_path / "page.html")
    driver.get(f"file://{page}")
    wait_for(driver, lambda d: d.find_elements(*_by("#top1")))
    assert int(driver.find_element(*_by("#top1")).get_attribute("data-id")) == \
        api["next"]["top"][0]["id"]
    assert "exported page" in driver.find_element(*_by("#model-info")).text
    assert not driver.find_element(*_by("#sample-btn")).is_enabled()
