//! The web console in headless Chromium, driven over WebDriver (Debian's chromium-driver) the
//! way a person uses it: a node listening beyond loopback asks for a sign-in, a FLAIR series
//! sent by DCMTK shows up with its thumbnail, its job page shows the result and the dead
//! letters left by a PACS that is down, Echo says so, then Echo succeeds once the PACS is up,
//! Resend delivers, Re-run runs the job again. Screenshots go to `out/console/`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::node::{NodeProc, Pacs, flair_files, free_port, state_of, wait_until};
use crate::util::{fcdnode, repo, tempdir, tool};

/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const USER: &str = "physicist";
const PASSWORD: &str = "correct horse battery staple";

/// A chromedriver process with one headless Chromium session.
struct Browser {
    driver: Child,
    session: String,
    base: String,
    http: Client,
}

impl Browser {
    fn start() -> Self {
        let port = free_port();
        let driver = Command::new(tool("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver (Debian chromium-driver, make setup): {e}"));
        let base = format!("http://127.0.0.1:{port}");
        let http = Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        wait_until("chromedriver", Duration::from_secs(30), || {
            http.get(format!("{base}/status"))
                .send()
                .and_then(|r| r.json::<Value>())
                .is_ok_and(|v| v["value"]["ready"] == true)
        });
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,1400",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": tool("chromium"), "args": args }
        } } });
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("WebDriver new session: {e}"));
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        let mut browser = Self {
            driver,
            session,
            base,
            http,
        };
        browser.base = format!("{}/session/{}", browser.base, browser.session);
        browser
    }

    fn call(&self, post: Option<Value>, path: &str) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match &post {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        let answer: Value = request
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        assert!(
            answer["value"]["error"].is_null(),
            "WebDriver {path}: {}",
            answer["value"]
        );
        answer["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call(Some(json!({ "url": url })), "/url");
    }

    fn url(&self) -> String {
        self.call(None, "/url").as_str().unwrap_or_default().to_owned()
    }

    fn find(&self, css: &str) -> String {
        let found = self.call(Some(json!({ "using": "css selector", "value": css })), "/element");
        found[ELEMENT].as_str().unwrap_or_default().to_owned()
    }

    fn count(&self, css: &str) -> usize {
        let found = self.call(Some(json!({ "using": "css selector", "value": css })), "/elements");
        found.as_array().map_or(0, Vec::len)
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call(Some(json!({})), &format!("/element/{id}/click"));
    }

    /// Clicks something that loads a page (a link, a form's button) and waits until the new
    /// page has replaced the old one: the old document is marked first, so nothing is read
    /// from it by mistake.
    fn click_and_load(&self, css: &str) {
        self.script("document.documentElement.dataset.old = '1';");
        self.click(css);
        wait_until(
            &format!("the page after clicking {css}"),
            Duration::from_secs(60),
            || {
                self.script(
                    "return document.readyState === 'complete' && document.documentElement.dataset.old === undefined;",
                ) == true
            },
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(Some(json!({})), &format!("/element/{id}/clear"));
        self.call(Some(json!({ "text": text })), &format!("/element/{id}/value"));
    }

    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.call(None, &format!("/element/{id}/text"))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn script(&self, js: &str) -> Value {
        self.call(Some(json!({ "script": js, "args": [] })), "/execute/sync")
    }

    /// Saves a PNG of the window to `out/console/NAME`.
    fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.call(None, "/screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let dir = repo().join("out/console");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &png).unwrap();
        let img = image::load_from_memory(&png).expect("screenshot is a PNG");
        assert!(img.width() >= 1000, "{name}: {}×{}", img.width(), img.height());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `fcdnode hash-password` with the password on standard input.
fn hash_password(password: &str) -> String {
    let mut child = fcdnode()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fcdnode hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The node's jobs through the JSON API, signed in with HTTP Basic.
fn jobs(api: &str) -> Vec<Value> {
    Client::new()
        .get(format!("{api}/jobs"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .and_then(|r| r.json::<Value>())
        .map(|v| v.as_array().cloned().unwrap_or_default())
        .unwrap_or_else(|e| panic!("GET /jobs: {e}"))
}

fn job_state(api: &str, id: i64) -> String {
    jobs(api)
        .iter()
        .find(|j| j["id"] == id)
        .map(|j| state_of(j).to_owned())
        .unwrap_or_default()
}

#[test]
fn a_physicist_signs_in_sees_the_job_echoes_resends_and_reruns_in_chromium() {
    let dir = tempdir();
    let pacs_port = free_port();
    let model = repo().join("models/demo");
    let mut node = NodeProc::configured(dir.path(), &model, pacs_port, "");
    let api = format!("http://127.0.0.1:{}", node.api_port);
    // Beyond loopback without users the configuration is refused.
    node.edit_config(|text| text.replace("bind = \"127.0.0.1:", "bind = \"0.0.0.0:"));
    let config = dir.path().join("fcdnode.toml");
    let refused = fcdnode()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("[[api.users]]"), "{why}");
    let hash = hash_password(PASSWORD);
    node.edit_config(|text| {
        format!("{text}\n[[api.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n")
            .replace("max_backoff_s = 2", "max_backoff_s = 2\nmax_attempts = 1")
    });
    node.restart();

    let browser = Browser::start();
    browser.go(&format!("{api}/"));
    assert!(browser.url().ends_with("/sign-in"), "{}", browser.url());
    browser.screenshot("01-sign-in.png");
    browser.type_into("#user", USER);
    browser.type_into("#password", "wrong password");
    browser.click_and_load("#sign-in");
    assert!(browser.text("#sign-in-failed").contains("Wrong user name or password"));
    browser.screenshot("02-sign-in-failed.png");
    browser.type_into("#user", USER);
    browser.type_into("#password", PASSWORD);
    browser.click_and_load("#sign-in");
    assert_eq!(browser.url(), format!("{api}/"));
    assert!(browser.text("header").contains(&format!("Signed in as {USER}")));

    // A FLAIR series from the modality; the PACS is down, one attempt each: dead letters.
    let sent = node.storescu(&flair_files());
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    wait_until("the job to be undeliverable", Duration::from_secs(300), || {
        jobs(&api).first().is_some_and(|j| state_of(j) == "undeliverable")
    });
    let job = jobs(&api)[0]["id"].as_i64().unwrap();
    browser.go(&format!("{api}/"));
    wait_until("the thumbnail to load", Duration::from_secs(20), || {
        browser
            .script("const i = document.querySelector('img.thumb'); return i && i.complete ? i.naturalWidth : 0;")
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let row = browser.text("#jobs tbody tr");
    assert!(
        row.contains(&format!("#{job}")) && row.contains("undeliverable"),
        "{row}"
    );
    assert!(row.contains("FCD type II suspected") && row.contains('%'), "{row}");
    browser.screenshot("03-jobs.png");

    browser.click_and_load(&format!("a[href='/console/jobs/{job}']"));
    let result = browser.text(".result");
    assert!(
        result.contains("probability") && result.contains("Hotspot on source slice"),
        "{result}"
    );
    let dead = browser.count(".deliveries .s-dead");
    assert!(dead >= 4, "SC, key image, PM, SR at least: {dead}");
    assert!(browser.text(".deliveries").contains("cannot connect"));
    browser.screenshot("04-job-dead-letters.png");

    browser.go(&format!("{api}/console/destinations"));
    browser.click_and_load("form[action='/console/destinations/pacs/echo'] button");
    let echo = browser.text("#echo-result");
    assert!(echo.contains("failed") && echo.contains("cannot connect"), "{echo}");
    browser.screenshot("05-echo-failed.png");
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    browser.click_and_load("form[action='/console/destinations/pacs/echo'] button");
    let echo = browser.text("#echo-result");
    assert!(echo.contains("succeeded"), "{echo}");
    browser.screenshot("06-echo-ok.png");

    // One dead letter from the dead-letter page, the rest from the job page.
    browser.go(&format!("{api}/console/dead"));
    assert_eq!(browser.count(".deliveries tbody tr"), dead);
    browser.screenshot("07-dead-letters.png");
    browser.click_and_load(".deliveries form[action$='/resend'] button");
    assert_eq!(browser.url(), format!("{api}/console/jobs/{job}"));
    browser.click_and_load(&format!("form[action='/console/jobs/{job}/resend'] button"));
    wait_until("the job to be delivered", Duration::from_secs(60), || {
        job_state(&api, job) == "delivered"
    });
    assert_eq!(pacs.files().len(), dead, "each output once at the PACS");
    browser.go(&format!("{api}/console/jobs/{job}"));
    assert_eq!(browser.count(".deliveries .s-delivered"), dead);
    browser.screenshot("08-job-delivered.png");

    browser.click_and_load(&format!("form[action='/console/jobs/{job}/rerun'] button"));
    let rerun = browser.url();
    let new: i64 = rerun
        .rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{rerun}"));
    assert!(new > job);
    wait_until("the re-run to be delivered", Duration::from_secs(300), || {
        job_state(&api, new) == "delivered"
    });
    browser.go(&format!("{api}/console/jobs/{new}"));
    assert!(
        browser.text("main").contains(&format!("job #{job}")),
        "supersedes the first"
    );
    browser.screenshot("09-rerun-delivered.png");
    assert_eq!(pacs.files().len(), 2 * dead, "the re-run's outputs are new instances");

    browser.click_and_load("header form[action='/sign-out'] button");
    assert!(browser.url().ends_with("/sign-in"));
    browser.go(&format!("{api}/console/dead"));
    assert!(browser.url().ends_with("/sign-in"), "signed out");

    let log = node.log_text();
    assert!(log.contains("console sign-in failed"), "{log}");
    assert!(log.contains("dead letter resent") && log.contains("job re-run"));
    let audit = std::fs::read_to_string(dir.path().join("data/audit/audit.log")).unwrap();
    let sign_ins: Vec<&str> = audit.lines().filter(|l| l.contains("110114")).collect();
    assert_eq!(sign_ins.len(), 3, "failed, signed in, signed out:\n{audit}");
    assert!(sign_ins[0].contains("EventOutcomeIndicator=\"4\""), "{}", sign_ins[0]);
    assert!(!audit.contains(PASSWORD) && !log.contains(PASSWORD));
}
