"""A fair queue you can see (issue 18): jobs take turns between users (not addresses, not
arrival), every waiting job knows its place and an estimated wait, a queued job can be
cancelled by its owner or an administrator — and the same holds for the page, the Gradio API
and the A1111 API of a launched server."""

import threading
import time

from pipelines.errors import DanqingError
from pipelines.jobs import Jobs
from pipelines.requests import Caller
from pipelines.team import Team


def test_one_users_ten_jobs_take_turns_with_a_teammates_one():
    """小王 has ten jobs waiting (from two addresses); 小李 sends one: it goes after the running
    job and at most one of 小王's. Each waiter hears its place as the line moves."""
    jobs = Jobs(threading.RLock(), "cpu")
    order, places = [], {}
    gate = threading.Event()

    def job(user: str, address: str, name: str, hold: float = 0.02) -> None:
        caller = Caller(client=name, user=user, address=address)
        def heard(place, eta) -> None:  # each new place (None: the turn has come)
            if place is not None and places.get(name, [None])[-1] != place:
                places.setdefault(name, []).append(place)

        with jobs.run(caller, kind="txt2img", on_wait=heard):
            if name == "W0":
                gate.wait(5)
            order.append(name)
            time.sleep(hold)

    threads = [threading.Thread(target=job, args=("小王", "10.0.0.1", "W0"))]
    threads[0].start()
    time.sleep(0.1)
    for i in range(1, 10):
        threads.append(threading.Thread(target=job, args=("小王", f"10.0.0.{1 + i % 2}", f"W{i}")))
        threads[-1].start()
        time.sleep(0.02)
    threads.append(threading.Thread(target=job, args=("小李", "10.0.0.9", "L1")))
    threads[-1].start()
    time.sleep(0.3)
    # What the line looks like now: 小王's running job, then 小李's next (小王 was served last).
    line = jobs.queue()
    assert line[0]["state"] == "running" and line[0]["client"] == "W0"
    assert [r["client"] for r in line[1:3]] == ["L1", "W1"] and [r["place"] for r in line[1:3]] == [0, 1]
    assert places["L1"][-1] == 0 and places["W9"][-1] == 9  # L1 and W1…W8 ahead
    gate.set()
    for thread in threads:
        thread.join(10)
    assert order[:3] == ["W0", "L1", "W1"], order
    # W9 heard 8, then 9 when 小李's job went ahead of it, then only forward, down to next.
    assert places["W9"][:2] == [8, 9] and places["W9"][1:] == sorted(places["W9"][1:], reverse=True)
    assert places["W9"][-1] == 0
    assert jobs.queue() == []


def test_waits_are_estimated_from_the_jobs_that_ran():
    jobs = Jobs(threading.RLock(), "cpu")
    assert jobs.estimate(3) is None  # nothing has run yet: no guess
    for _ in range(3):
        with jobs.run(Caller(client="a", user="甲"), kind="txt2img"):
            time.sleep(0.2)
    estimate = jobs.estimate(2)
    assert 0.35 < estimate < 0.7  # two jobs of ~0.2 s ahead (nothing running)


def test_a_waiting_job_is_cancelled_by_its_owner_or_an_administrator_only(studio):
    """Through the studio: the line as each user sees it (others' jobs without who or what),
    cancelling by id."""
    studio.team = Team(admins=frozenset({"组长"}), logins=True, several=True)
    release = threading.Event()
    outcomes = {}

    def job(user: str, client: str) -> None:
        try:
            with studio.jobs.run(Caller(client=client, user=user, address=client), kind="txt2img"):
                if client == "blocker":
                    release.wait(10)
            outcomes[client] = "ran"
        except DanqingError as exc:  # JobCancelled is "cancelled"
            outcomes[client] = exc.code

    threads = [threading.Thread(target=job, args=args) for args in
               (("组长", "blocker"), ("小王", "wang-1"), ("小李", "li-1"), ("小王", "wang-2"))]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    try:
        seen = studio.queue_view("小李")
        assert [r["state"] for r in seen] == ["running", "waiting", "waiting", "waiting"]
        others = [r for r in seen if not r["mine"]]
        assert all(r["id"] is None and r["user"] == "" for r in others)  # someone, nothing more
        mine = next(r for r in seen if r["mine"])
        wang = [r for r in studio.queue_view("小王") if r["mine"]]
        assert len(wang) == 2
        for job_id, user in ((wang[0]["id"], "小李"), ("nonsense", "小王")):
            try:
                studio.cancel_job(job_id, user)
                raise AssertionError("cancelled another's job")
            except DanqingError as exc:
                assert exc.code == "job_not_found"
        assert studio.cancel_job(mine["id"], "小李")["cancelled"]
        assert studio.cancel_job(wang[1]["id"], "组长")["cancelled"]  # an administrator may
        time.sleep(0.5)
        assert [r["user"] for r in studio.queue_view("组长")] == ["组长", "小王"]
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
        studio.team = Team()
    assert outcomes == {"blocker": "ran", "wang-1": "ran", "li-1": "cancelled", "wang-2": "cancelled"}


# Through a launched team server --------------------------------------------------------------
from test_history import TEAM, call  # noqa: E402 (the team and its HTTP helper)


def _request(app, method, path, user=None, payload=None, **options):
    return call(app, method, path, user, payload, **{"timeout": 300, **options})


def _login(app, user, source):
    import http.client
    import urllib.parse

    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", "/login", urllib.parse.urlencode({"username": user, "password": TEAM[user]}),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        return "; ".join(c.split(";")[0] for c in response.headers.get_all("set-cookie"))
    finally:
        conn.close()


def test_a_flooding_user_and_a_teammate_through_the_server(demo_models, demo_cache, tmp_path):
    """组长 keeps the GPU busy; 小王 sends four jobs by the A1111 API from two addresses; 小李
    one by the Gradio API (logged in). 小李 sees their place and an estimate, others' jobs only
    as someone's; 小李's job runs right after 小王's first; 小王 cancels one of theirs while it
    waits; 小李 cannot cancel 小王's."""
    import json

    from conftest import LaunchedApp
    from pipelines.demo import DEMO_MODEL

    app = LaunchedApp(["--models-dir", str(demo_models), "--model", DEMO_MODEL, "--offline", "--api",
                       "--auth", ",".join(f"{u}:{p}" for u, p in TEAM.items()), "--preview-every", "0"],
                      demo_cache, tmp_path / "outputs")
    finished: dict[str, float] = {}
    answers: dict[str, tuple] = {}

    def a1111(name, user, source, steps, size=64):
        answers[name] = _request(app, "POST", "/sdapi/v1/txt2img", user,
                                 {"prompt": name, "width": size, "height": size, "steps": steps}, source=source)
        finished[name] = time.monotonic()

    def gradio(name, cookie, source):
        status, answer = _request(app, "POST", "/gradio_api/call/v2/txt2img",
                                  payload={"prompt": name, "width": 64, "height": 64, "num_inference_steps": 4},
                                  cookie=cookie, source=source)
        assert status == 200, answer
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=300, source_address=(source, 0))
        conn.request("GET", f"/gradio_api/call/txt2img/{answer['event_id']}", headers={"Cookie": cookie})
        text = conn.getresponse().read().decode()
        conn.close()
        answers[name] = ("complete" if "event: complete" in text else text[-300:],)
        finished[name] = time.monotonic()

    try:
        assert _request(app, "POST", "/sdapi/v1/txt2img", "组长", {"prompt": "热身", "width": 64, "height": 64,
                                                                    "steps": 1})[0] == 200
        li_cookie = _login(app, "小李", "127.0.0.31")
        threads = [threading.Thread(target=a1111, args=("blocker", "组长", "127.0.0.20", 150, 256))]
        threads[0].start()
        time.sleep(1.0)
        for i in range(4):
            threads.append(threading.Thread(target=a1111, args=(f"W{i}", "小王", f"127.0.0.{21 + i % 2}", 4)))
            threads[-1].start()
            time.sleep(0.3)
        threads.append(threading.Thread(target=gradio, args=("L0", li_cookie, "127.0.0.31")))
        threads[-1].start()
        time.sleep(2.0)
        # The line as 小李 sees it (the blocker still running).
        status, line = _request(app, "GET", "/danqing/v1/queue", "小李")
        assert status == 200 and line[0]["state"] == "running", line
        waiting = [r for r in line if r["state"] == "waiting"]
        assert len(waiting) == 5 and [r["place"] for r in waiting] == [0, 1, 2, 3, 4]
        mine = [r for r in waiting if r["mine"]]
        assert len(mine) == 1 and mine[0]["place"] == 1 and mine[0]["kind"] == "txt2img"
        assert mine[0]["eta"] is not None and mine[0]["eta"] > 0
        assert all(r["user"] == "" and r["id"] is None for r in line if not r["mine"])
        # The administrator sees everyone's, in order: 小王's first, 小李's, then 小王's others.
        _, everyone = _request(app, "GET", "/danqing/v1/queue", "组长")
        assert [r["user"] for r in everyone] == ["组长", "小王", "小李", "小王", "小王", "小王"]
        wang_last = everyone[-1]["id"]
        status, refused = _request(app, "POST", f"/danqing/v1/queue/{wang_last}/cancel", "小李")
        assert status == 404 and "队列里没有这个任务" in refused["detail"]
        assert _request(app, "POST", f"/danqing/v1/queue/{wang_last}/cancel", "小王")[0] == 200
        # 组长 lets the others go: cancels the running blocker.
        assert _request(app, "POST", f"/danqing/v1/queue/{everyone[0]['id']}/cancel", "组长")[0] == 200
        for thread in threads:
            thread.join(300)
        # 用量: the administrator's per-user count; nobody else's business.
        status, usage = _request(app, "GET", "/danqing/v1/usage", "组长")
        rows = {r["user"]: r for r in usage}
        assert status == 200 and rows["小王"]["images"] == 3 and rows["小王"]["jobs"] == 3, usage
        assert rows["小李"]["images"] == 1 and rows["组长"]["cancelled"] == 1 and rows["组长"]["gpu_seconds"] > 0
        status, refused = _request(app, "GET", "/danqing/v1/usage", "小李")
        assert status == 403 and "管理员" in refused["detail"]
    finally:
        app.stop()
    assert answers["L0"] == ("complete",), answers["L0"]
    wang_done = sorted((t, n) for n, t in finished.items() if n.startswith("W") and answers[n][0] == 200
                       and json.loads(answers[n][1]["info"]).get("files"))
    assert finished["L0"] < wang_done[1][0], (finished, wang_done)  # after 小王's first, before their second
    cancelled = [n for n in ("W0", "W1", "W2", "W3") if not json.loads(answers[n][1]["info"]).get("files")]
    assert len(cancelled) == 1, answers


def test_jobs_cut_off_by_a_stop_are_told_to_their_user_once(tmp_path):
    """The journal: a job is written down when accepted and struck out when it ends however it
    ends; the ones still open when the process died are, at the next start, its user's
    unfinished jobs (by user, or by address without logins), told once. The page shows them in
    a banner, and Gradio's English "connection lost" message is replaced by ours."""
    from pipelines.history import UsageLog
    from strings import load
    from ui.layout import page_js, unfinished_text

    log = UsageLog(tmp_path)
    jobs = Jobs(threading.RLock(), "cpu")
    jobs.journal = log
    with jobs.run(Caller(client="a", user="小王"), kind="txt2img"):
        pass
    try:
        with jobs.run(Caller(client="b", user="小王"), kind="img2img"):
            raise DanqingError("internal")
    except DanqingError:
        pass
    assert log._connect().execute("SELECT count(*) FROM open_jobs").fetchone()[0] == 0
    # Two jobs in flight when the process dies: one running, one waiting (another address).
    running, waiting = Caller(client="c", user="小李"), Caller(client="d", address="10.0.0.7")
    entered = threading.Event()

    def hold():
        with jobs.run(running, kind="inpaint"):
            entered.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait(5)
    ticket_open = threading.Thread(target=lambda: jobs.run(waiting, kind="upscale").__enter__())
    ticket_open.daemon = True
    ticket_open.start()
    time.sleep(0.2)
    snapshot = tmp_path / "copy"
    snapshot.mkdir()
    log._connect().execute(f"VACUUM INTO '{snapshot / 'usage.sqlite3'}'")  # the disk as a kill -9 leaves it
    thread.join()
    after = UsageLog(snapshot)
    assert after.recover() == 2
    assert [j["kind"] for j in after.unfinished("user:小李")] == ["inpaint"]
    assert after.unfinished("user:小李") == []  # told once
    assert [j["kind"] for j in after.unfinished("address:10.0.0.7")] == ["upscale"]
    assert after.unfinished("user:小王") == []
    S = load("zh")
    text = unfinished_text(S, [{"at": time.time(), "kind": "inpaint"}])
    assert "1 个任务没有完成" in text and "局部重绘" in text and "历史" in text
    assert unfinished_text(S, []) == ""
    head = page_js(S)
    assert "Connection to the server was lost. Attempting reconnection..." in head and "与服务器的连接断开了" in head


def test_with_two_gpus_two_jobs_run_at_once_and_turns_stay_fair():
    """Ray Serve replicas: one turn per replica. With two, two jobs hold the GPU at once; the
    waiting line still takes turns between users, and each running job has its own progress.
    (No GPU lock here: each replica has its own, as the studio sets it up for --ray.)"""
    from pipelines.studio import NO_LOCK

    jobs = Jobs(NO_LOCK, "cpu", capacity=2)
    inside, order = [], []
    both = threading.Event()
    gate = threading.Event()

    def job(user: str, name: str) -> None:
        with jobs.run(Caller(client=name, user=user), kind="txt2img") as (_, hook):
            inside.append(name)
            hook(1, 10)
            if len(inside) == 2:
                both.set()
            if name in ("W0", "W1"):
                gate.wait(5)
            order.append(name)

    threads = [threading.Thread(target=job, args=("小王", f"W{i}")) for i in range(2)]
    for t in threads:
        t.start()
    assert both.wait(5), "two jobs never ran at once"
    running = [r for r in jobs.queue() if r["state"] == "running"]
    assert sorted(r["client"] for r in running) == ["W0", "W1"] and all(r["step"] == 1 for r in running)
    more = [threading.Thread(target=job, args=("小王", f"W{i}")) for i in range(2, 5)]
    for t in more:
        t.start()
        time.sleep(0.05)
    late = threading.Thread(target=job, args=("小李", "L1"))
    late.start()
    time.sleep(0.3)
    line = [r["client"] for r in jobs.queue() if r["state"] == "waiting"]
    assert line[:2] == ["L1", "W2"] or line[:2] == ["W2", "L1"], line  # 小李 at most one behind
    assert line.index("L1") <= 1
    gate.set()
    for t in threads + more + [late]:
        t.join(10)
    assert order.index("L1") <= 3, order
