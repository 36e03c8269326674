"""Screenshot a JS-rendered page through the Chrome DevTools Protocol: chromium's own --screenshot
with --virtual-time-budget left MLflow's plotly charts spinning. Waits 20 s of real time, optionally
types FILTER into the page's search box, waits 10 s more. Needs chromium and aiohttp (an MLflow dependency).

  mlflow ui --backend-store-uri sqlite:////abs/store/mlflow.db --host 127.0.0.1 --port 5055 &
  python scripts/screenshot_mlflow_ui.py \
    "http://127.0.0.1:5055/#/experiments/1/runs/RUN_ID/model-metrics?workflowType=machine_learning" out.png fid
"""
import asyncio, base64, json, subprocess, sys, tempfile, time, urllib.request
import aiohttp

URL, OUT, FILTER = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")
W, H = 1600, 1000
proc = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         f"--user-data-dir={tempfile.mkdtemp()}", "--remote-debugging-port=9333", f"--window-size={W},{H}",
                         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(60):
        try:
            tabs = json.load(urllib.request.urlopen("http://127.0.0.1:9333/json"))
            break
        except OSError:
            time.sleep(0.5)
    ws_url = [t for t in tabs if t["type"] == "page"][0]["webSocketDebuggerUrl"]

    async def main():
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url, max_msg_size=0) as ws:
            n = 0

            async def call(method, **params):
                nonlocal n
                n += 1
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    msg = json.loads((await ws.receive()).data)
                    if msg.get("id") == n:
                        return msg.get("result", msg)

            await call("Page.enable")
            await call("Emulation.setDeviceMetricsOverride", width=W, height=H, deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", url=URL)
            await asyncio.sleep(20)
            if FILTER:  # type into the chart search box (a React input: native setter + input event)
                js = ("const i=document.querySelector('input[placeholder*=\"Search\"]');"
                      "const set=Object.getOwnPropertyDescriptor(HTMLInputElement.prototype,'value').set;"
                      f"set.call(i,{json.dumps(FILTER)});i.dispatchEvent(new Event('input',{{bubbles:true}}));'ok'")
                print(await call("Runtime.evaluate", expression=js))
                await asyncio.sleep(10)
            shot = await call("Page.captureScreenshot", format="png")
            open(OUT, "wb").write(base64.b64decode(shot["data"]))

    asyncio.run(main())
finally:
    proc.terminate()
    proc.wait()
