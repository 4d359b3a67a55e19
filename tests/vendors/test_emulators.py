"""The emulators refuse requests that break the vendors' contracts, so adapter tests can fail."""

from __future__ import annotations

import httpx

from tests.vendors.conftest import KEYS


async def post(url: str, *, headers: dict[str, str], json: object) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url, headers=headers, json=json)


async def test_openai_contract(openai_emu):
    url = f"{openai_emu.base_url}/v1/images/generations"
    good = {"model": "dall-e-3", "prompt": "a fox", "size": "1024x1024"}
    auth = {"Authorization": f"Bearer {KEYS['openai']}"}
    assert (await post(url, headers=auth, json=good)).status_code == 200
    assert (await post(url, headers={}, json=good)).status_code == 401
    assert (await post(url, headers={"Authorization": "Bearer wrong"}, json=good)).status_code == 401
    assert (await post(url, headers={"x-api-key": KEYS["openai"]}, json=good)).status_code == 401
    missing = await post(url, headers=auth, json={"model": "dall-e-3"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    assert (await post(url, headers=auth, json={**good, "size": "512x512"})).status_code == 400
    assert (await post(url, headers=auth, json={**good, "n": 2})).status_code == 400
    gpt = {"model": "gpt-image-2", "prompt": "a fox", "size": "1536x1024"}
    assert (await post(url, headers=auth, json=gpt)).status_code == 200
    assert (await post(url, headers=auth, json={**gpt, "response_format": "url"})).status_code == 400
    assert (await post(url, headers=auth, json={**gpt, "quality": "hd"})).status_code == 400
    assert (await post(url, headers=auth, json={**gpt, "size": "1792x1024"})).status_code == 400


async def test_bfl_contract(bfl_emu):
    url = f"{bfl_emu.base_url}/v1/flux-pro-1.1"
    good = {"prompt": "a fox", "width": 1024, "height": 768}
    auth = {"x-key": KEYS["bfl"]}
    answer = await post(url, headers=auth, json=good)
    assert answer.status_code == 200 and set(answer.json()) >= {"id", "polling_url"}
    assert (await post(url, headers={}, json=good)).status_code == 403
    assert (await post(url, headers={"x-key": "wrong"}, json=good)).status_code == 403
    assert (await post(url, headers={"Authorization": f"Bearer {KEYS['bfl']}"}, json=good)).status_code == 403
    assert (await post(url, headers=auth, json={"width": 1024, "height": 768})).status_code == 422
    assert (await post(url, headers=auth, json={**good, "width": 1000})).status_code == 422
    assert (await post(url, headers=auth, json={**good, "height": 2048})).status_code == 422
    assert (await post(url, headers=auth, json={**good, "n": 2})).status_code == 422
    assert (await post(f"{bfl_emu.base_url}/v1/no-such-model", headers=auth, json=good)).status_code == 404
    async with httpx.AsyncClient() as client:
        polling_url = answer.json()["polling_url"]
        assert (await client.get(polling_url)).status_code == 403
        assert (await client.get(polling_url, headers=auth)).json()["status"] == "Pending"


async def test_ideogram_contract(ideogram_emu):
    url = f"{ideogram_emu.base_url}/generate"
    good = {"image_request": {"prompt": "a fox", "model": "V_2", "resolution": "RESOLUTION_1024_1024"}}
    auth = {"Api-Key": KEYS["ideogram"]}
    assert (await post(url, headers=auth, json=good)).status_code == 200
    assert (await post(url, headers={}, json=good)).status_code == 401
    assert (
        await post(url, headers={"Authorization": f"Bearer {KEYS['ideogram']}"}, json=good)
    ).status_code == 401
    assert (await post(url, headers=auth, json={"prompt": "a fox"})).status_code == 400
    assert (await post(url, headers=auth, json={"image_request": {"model": "V_2"}})).status_code == 400
    bad_res = {"image_request": {"prompt": "a fox", "resolution": "RESOLUTION_1000_1000"}}
    assert (await post(url, headers=auth, json=bad_res)).status_code == 400
    both = {
        "image_request": {"prompt": "a", "resolution": "RESOLUTION_1024_1024", "aspect_ratio": "ASPECT_1_1"}
    }
    assert (await post(url, headers=auth, json=both)).status_code == 400
    assert (
        await post(url, headers=auth, json={"image_request": {"prompt": "a", "num_images": 9}})
    ).status_code == 400


async def test_google_contract(google_emu):
    predict = f"{google_emu.base_url}/v1beta/models/imagen-3.0-generate-002:predict"
    good = {"instances": [{"prompt": "a fox"}], "parameters": {"sampleCount": 1, "aspectRatio": "1:1"}}
    auth = {"x-goog-api-key": KEYS["google"]}
    assert (await post(predict, headers=auth, json=good)).status_code == 200
    assert (await post(predict, headers={}, json=good)).status_code == 403
    wrong = await post(predict, headers={"x-goog-api-key": "wrong"}, json=good)
    assert wrong.status_code == 400 and wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert (
        await post(predict, headers={"Authorization": f"Bearer {KEYS['google']}"}, json=good)
    ).status_code == 403
    assert (await post(predict, headers=auth, json={"instances": [{}]})).status_code == 400
    bad_ratio = {**good, "parameters": {"aspectRatio": "3:2"}}
    assert (await post(predict, headers=auth, json=bad_ratio)).status_code == 400
    unknown = {**good, "parameters": {"numberOfImages": 2}}
    assert (await post(predict, headers=auth, json=unknown)).status_code == 400
    retired = f"{google_emu.base_url}/v1beta/models/imagen-3.0-generate-001:predict"
    assert (await post(retired, headers=auth, json=good)).status_code == 404
    content = f"{google_emu.base_url}/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert (await post(content, headers=auth, json={"contents": []})).status_code == 400
