//! Scale-out on Redis Streams, with real processes: a `redis-server` of the test's own (free loopback port,
//! temporary folder, append-only file fsynced on every write), API servers started as
//! `sdrt serve --queue redis://…` and workers as `sdrt worker --queue redis://…` on the tiny model, killed and
//! restarted the way a deployment loses them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const NODE: &str = env!("CARGO_BIN_EXE_sdrt-under-test");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port()
}

/// A child process killed when the test ends, however it ends.
struct Process {
    child: Child,
    name: String,
}

impl Process {
    fn start(name: &str, command: &mut Command) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, name: name.to_owned() }
    }

    /// SIGKILL: the process gets no chance to clean up.
    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// SIGTERM, then waits for the process to exit on its own.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within {within:?} of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on a free loopback port with its data in a temporary folder.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Redis {
    fn start() -> Self {
        let mut redis = Self { port: free_port(), dir: tempfile::tempdir().unwrap(), process: None };
        redis.launch();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.current_dir(self.dir.path()).args(["--port", &port, "--bind", "127.0.0.1", "--save", ""]);
        command.args(["--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning"]);
        self.process = Some(Process::start("redis-server", &mut command));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start (is it installed? `apt-get install redis-server`)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// SIGKILL and start again on the same port and data folder (the append-only file is all it keeps).
    fn crash_and_restart(&mut self, down_for: Duration) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        std::thread::sleep(down_for);
        self.launch();
    }
}

fn node_command(args: &[&str]) -> Command {
    let mut command = Command::new(NODE);
    command.args(args).env("RUST_LOG", "warn");
    command
}

/// `sdrt serve --queue` on a free port; waits until it answers.
fn api_server(redis: &Redis, extra: &[&str]) -> (Process, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let outdir = std::env::temp_dir().join(format!("sdrt-scale-out-{port}"));
    let outdir = outdir.display().to_string();
    let url = redis.url();
    let mut args = vec!["serve", "--queue", &url, "--listen", &listen, "--outdir", &outdir, "--queue-capacity", "256"];
    args.extend(extra);
    let mut command = node_command(&args);
    let process = Process::start("sdrt serve", &mut command);
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{base}/sdapi/v1/samplers")).0 != 200 {
        assert!(Instant::now() < deadline, "the API server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (process, base)
}

fn worker(redis: &Redis, name: &str, extra: &[&str]) -> Process {
    let url = redis.url();
    let mut args = vec!["worker", "--queue", &url, "--name", name, "--threads", "1", "--reclaim-after", "2"];
    args.extend(extra);
    Process::start(name, &mut node_command(&args))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    match response {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        // Connection refused while a server restarts: the caller retries.
        Err(error) => (0, Value::String(error.to_string())),
    }
}

fn get(url: &str) -> (u16, Value) {
    answer(agent().get(url).call())
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    answer(agent().post(url).header("content-type", "application/json").send(body.to_string()))
}

fn delete(url: &str) -> (u16, Value) {
    answer(agent().delete(url).call())
}

fn txt2img(seed: u64, steps: u32) -> Value {
    json!({"prompt": format!("job {seed}"), "seed": seed, "steps": steps, "width": 64, "height": 64,
           "sampler_name": "Euler", "cfg_scale": 7})
}

fn submit(base: &str, request: &Value) -> u64 {
    let (status, body) = post(&format!("{base}/sdrt/v1/jobs"), &json!({"kind": "txt2img", "request": request}));
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// The job's status; retries while the server or Redis is restarting (503 or no connection).
fn status(base: &str, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(&format!("{base}/sdrt/v1/jobs/{id}"));
        if code == 200 {
            return body;
        }
        assert!(code == 503 || code == 0, "job {id}: {code} {body}");
        assert!(Instant::now() < deadline, "job {id}: the queue stayed unreachable: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until job `id` reaches a state `done` accepts.
fn wait_until(base: &str, id: u64, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let current = status(base, id);
        if done(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "job {id} never got there: {current}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finished(status: &Value) -> bool {
    !matches!(status["state"].as_str(), Some("queued" | "running"))
}

/// The seed A1111's `info` reports for a finished job's result.
fn result_seed(base: &str, id: u64) -> u64 {
    let (code, body) = get(&format!("{base}/sdrt/v1/jobs/{id}/result"));
    assert_eq!(code, 200, "job {id}: {body}");
    assert_eq!(body["images"].as_array().map(Vec::len), Some(1), "job {id}: one image");
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    info["seed"].as_u64().unwrap()
}

#[test]
fn three_workers_answer_two_hundred_jobs_exactly_once() {
    let redis = Redis::start();
    let (_server, base) = api_server(&redis, &[]);
    let _workers: Vec<Process> = (1..=3).map(|n| worker(&redis, &format!("w{n}"), &[])).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, listed) = get(&format!("{base}/sdrt/v1/workers"));
        let names: Vec<&str> = listed.as_array().into_iter().flatten().filter_map(|w| w["name"].as_str()).collect();
        if names == ["w1", "w2", "w3"] {
            break;
        }
        assert!(Instant::now() < deadline, "the workers never announced themselves: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids: BTreeMap<u64, u64> =
        (0..200u64).map(|seed| (submit(&base, &txt2img(1000 + seed, 2)), 1000 + seed)).collect();
    assert_eq!(ids.len(), 200, "every submission got its own id");
    // A1111's blocking endpoint goes through the same queue.
    let (code, body) = post(&format!("{base}/sdapi/v1/txt2img"), &txt2img(7, 2));
    assert_eq!(code, 200, "{body}");
    let mut ran_on = BTreeMap::<String, usize>::new();
    for (&id, &seed) in &ids {
        let done = wait_until(&base, id, Duration::from_secs(600), finished);
        assert_eq!(done["state"], "succeeded", "job {id}: {done}");
        assert_eq!(done["attempts"], 1, "job {id} ran once: {done}");
        *ran_on.entry(done["worker"].as_str().unwrap().to_owned()).or_default() += 1;
        assert_eq!(result_seed(&base, id), seed, "job {id} answered with its own request");
    }
    assert_eq!(ran_on.values().sum::<usize>(), 200);
    assert!(ran_on.len() >= 2, "the work was shared: {ran_on:?}");
}

#[test]
fn a_job_whose_worker_is_killed_completes_on_another() {
    let redis = Redis::start();
    let (_server, base) = api_server(&redis, &[]);
    let mut first = worker(&redis, "doomed", &[]);
    let id = submit(&base, &txt2img(42, 400));
    wait_until(&base, id, Duration::from_secs(60), |s| {
        s["state"] == "running" && s["sampling_step"].as_i64() > Some(0)
    });
    first.kill();
    let _second = worker(&redis, "survivor", &[]);
    let done = wait_until(&base, id, Duration::from_secs(300), finished);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["worker"], "survivor", "{done}");
    assert_eq!(done["attempts"], 2, "started once on each worker: {done}");
    assert_eq!(result_seed(&base, id), 42);
}

#[test]
fn a_job_that_keeps_killing_its_workers_ends_failed() {
    let redis = Redis::start();
    let (_server, base) = api_server(&redis, &[]);
    let mut first = worker(&redis, "first", &["--max-attempts", "1"]);
    let id = submit(&base, &txt2img(5, 400));
    wait_until(&base, id, Duration::from_secs(60), |s| s["state"] == "running");
    first.kill();
    let _second = worker(&redis, "second", &["--max-attempts", "1"]);
    let done = wait_until(&base, id, Duration::from_secs(120), finished);
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("started 1 times"), "{done}");
    let (code, body) = get(&format!("{base}/sdrt/v1/jobs/{id}/result"));
    assert_eq!(code, 500, "{body}");
}

#[test]
fn no_accepted_job_is_lost_when_redis_restarts() {
    let mut redis = Redis::start();
    let (_server, base) = api_server(&redis, &[]);
    let _workers: Vec<Process> = (1..=2).map(|n| worker(&redis, &format!("w{n}"), &[])).collect();
    let ids: Vec<(u64, u64)> = (0..30u64).map(|seed| (submit(&base, &txt2img(seed, 30)), seed)).collect();
    wait_until(&base, ids[2].0, Duration::from_secs(120), finished);
    let last = status(&base, ids[29].0);
    assert_eq!(last["state"], "queued", "work is still waiting when Redis goes down: {last}");
    redis.crash_and_restart(Duration::from_millis(1500));
    // Accepted while Redis was away and back: the queue takes new work again.
    let late = (0..5u64).map(|seed| (submit_retrying(&base, &txt2img(100 + seed, 4)), 100 + seed));
    let ids: Vec<(u64, u64)> = ids.into_iter().chain(late).collect();
    for (id, seed) in ids {
        let done = wait_until(&base, id, Duration::from_secs(300), finished);
        assert_eq!(done["state"], "succeeded", "job {id}: {done}");
        assert_eq!(result_seed(&base, id), seed);
    }
}

/// Submits, retrying while Redis is still coming back (503 names it; nothing was accepted then).
fn submit_retrying(base: &str, request: &Value) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = post(&format!("{base}/sdrt/v1/jobs"), &json!({"kind": "txt2img", "request": request}));
        if code == 202 {
            return body["id"].as_str().unwrap().parse().unwrap();
        }
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["error"], "QueueUnavailable", "{body}");
        assert!(Instant::now() < deadline, "Redis never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_api_servers_agree_on_jobs_and_progress() {
    let redis = Redis::start();
    let (_a, base_a) = api_server(&redis, &[]);
    let (_b, base_b) = api_server(&redis, &[]);
    let _worker = worker(&redis, "w1", &[]);
    let id = submit(&base_a, &txt2img(9, 300));
    let on_a = wait_until(&base_a, id, Duration::from_secs(60), |s| s["sampling_step"].as_i64() > Some(2));
    let on_b = status(&base_b, id);
    let again_a = status(&base_a, id);
    assert_eq!(on_b["state"], "running", "{on_b}");
    assert_eq!(on_b["worker"], "w1");
    let steps = |s: &Value| s["sampling_step"].as_i64().unwrap();
    assert!(steps(&on_a) <= steps(&on_b) && steps(&on_b) <= steps(&again_a), "{on_a} / {on_b} / {again_a}");
    // A1111's global progress, asked of the server that did not submit the job.
    let (code, progress) = get(&format!("{base_b}/sdapi/v1/progress?skip_current_image=true"));
    assert_eq!(code, 200);
    assert!(progress["state"]["sampling_step"].as_i64() > Some(0), "{progress}");
    assert!(progress["progress"].as_f64() > Some(0.0), "{progress}");
    // Cancelling through B stops the job A accepted.
    delete(&format!("{base_b}/sdrt/v1/jobs/{id}"));
    let done = wait_until(&base_a, id, Duration::from_secs(60), finished);
    assert_eq!(done["state"], "cancelled", "{done}");
    // Options posted to B reach the worker that runs A's next job (A1111's options are global).
    let (code, body) = post(&format!("{base_b}/sdapi/v1/options"), &json!({"CLIP_stop_at_last_layers": 2}));
    assert_eq!(code, 200, "{body}");
    let next = submit(&base_a, &txt2img(10, 2));
    assert_eq!(wait_until(&base_a, next, Duration::from_secs(60), finished)["state"], "succeeded");
    let (_, result) = get(&format!("{base_a}/sdrt/v1/jobs/{next}/result"));
    let info: Value = serde_json::from_str(result["info"].as_str().unwrap()).unwrap();
    assert!(info["infotexts"][0].as_str().unwrap().contains("Clip skip: 2"), "{info}");
}

#[test]
fn cancel_reaches_queued_and_running_jobs_and_sigterm_finishes_the_job_first() {
    let redis = Redis::start();
    let (_server, base) = api_server(&redis, &[]);
    let mut busy = worker(&redis, "busy", &[]);
    let running = submit(&base, &txt2img(1, 300));
    let queued = submit(&base, &txt2img(2, 2));
    wait_until(&base, running, Duration::from_secs(60), |s| s["sampling_step"].as_i64() > Some(0));
    assert_eq!(status(&base, queued)["queue_position"], 1, "behind the running job");
    let (code, body) = delete(&format!("{base}/sdrt/v1/jobs/{queued}"));
    assert_eq!((code, body["state"].as_str()), (200, Some("cancelled")), "{body}");
    let (code, _) = delete(&format!("{base}/sdrt/v1/jobs/{running}"));
    assert_eq!(code, 200);
    let done = wait_until(&base, running, Duration::from_secs(60), finished);
    assert_eq!(done["state"], "cancelled", "{done}");
    let (code, _) = get(&format!("{base}/sdrt/v1/jobs/{running}/result"));
    assert_eq!(code, 200, "an interrupted job keeps what it made");
    // The cancelled queued job never started.
    let never = status(&base, queued);
    assert_eq!((never["state"].as_str(), never["attempts"].as_u64()), (Some("cancelled"), Some(0)), "{never}");
    // SIGTERM during a job: the worker finishes it, stores the result, and exits 0.
    let last = submit(&base, &txt2img(3, 60));
    wait_until(&base, last, Duration::from_secs(60), |s| s["state"] == "running");
    let exit = busy.terminate(Duration::from_secs(120));
    assert!(exit.success(), "{exit:?}");
    let done = status(&base, last);
    assert_eq!(done["state"], "succeeded", "finished before the worker stopped: {done}");
}

#[test]
fn a_job_for_a_model_no_worker_holds_goes_to_a_worker_that_loads_it() {
    let models = sdrt_tests::fixtures_dir().join("models");
    let models = models.display().to_string();
    let redis = Redis::start();
    let (_server, base) = api_server(&redis, &["--models-dir", &models]);
    let _worker = worker(&redis, "w1", &["--models-dir", &models]);
    let warm = submit(&base, &txt2img(1, 2));
    assert_eq!(wait_until(&base, warm, Duration::from_secs(60), finished)["state"], "succeeded");
    let mut request = txt2img(2, 2);
    request["override_settings"] = json!({"sd_model_checkpoint": "sd2-tiny-v"});
    let cold = submit(&base, &request);
    let done = wait_until(&base, cold, Duration::from_secs(60), finished);
    assert_eq!((done["state"].as_str(), done["worker"].as_str()), (Some("succeeded"), Some("w1")), "{done}");
    let (_, result) = get(&format!("{base}/sdrt/v1/jobs/{cold}/result"));
    let info: Value = serde_json::from_str(result["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "sd2-tiny-v", "{info}");
    // The worker now holds that model and says so, so its jobs are routed to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed) = get(&format!("{base}/sdrt/v1/workers"));
        if listed[0]["models"] == json!(["sd2-tiny-v"]) {
            break;
        }
        assert!(Instant::now() < deadline, "{listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_stops_a_job_past_its_time_limit() {
    let redis = Redis::start();
    let (_server, base) = api_server(&redis, &[]);
    let _worker = worker(&redis, "strict", &["--job-timeout", "1"]);
    let id = submit(&base, &txt2img(8, 1000));
    let done = wait_until(&base, id, Duration::from_secs(120), finished);
    assert_eq!(done["state"], "timed_out", "{done}");
    assert!(done["error"].as_str().unwrap().contains("time limit"), "{done}");
    let (code, body) = get(&format!("{base}/sdrt/v1/jobs/{id}/result"));
    assert_eq!(code, 504, "{body}");
}
