//! The status page in a real browser: the lab's agent serves it, headless Chromium
//! (Debian's `chromium`) loads it in `in_sync`, `link_down` and `needs_attention`; the
//! words are read from the DOM, the verdict's colour from a phone-sized screenshot, and
//! the timeline must show the outage this test caused. Every answer is scanned for the
//! lab's passwords and the device key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_harness::lab::{AgentMode, Lab, LabOptions};

/// Bound on one Chromium run (it is slow to start on a loaded machine).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// A phone held upright.
const WINDOW: (u32, u32) = (412, 915);

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs Chromium headless with `args` (plus the isolating flags) and returns stdout.
fn chromium(profile: &Path, args: &[String]) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (cargo xtask install puts it there)");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut { stdout }, &mut out).ok();
        out
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// The page as Chromium built it, and a screenshot of it.
struct Seen {
    dom: String,
    png: PathBuf,
}

async fn look(url: &str, dir: &Path, name: &str) -> Seen {
    let (url, dir, name) = (url.to_owned(), dir.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        let profile = dir.join(format!("profile-{name}"));
        let dom = chromium(&profile, &["--dump-dom".into(), url.clone()]);
        let png = dir.join(format!("{name}.png"));
        chromium(
            &profile,
            &[format!("--screenshot={}", png.display()), url.clone()],
        );
        assert!(png.exists(), "chromium wrote no screenshot for {name}");
        // To look at them: STATUS_PAGE_SHOTS=/some/dir cargo test ... status_page
        if let Some(keep) = std::env::var_os("STATUS_PAGE_SHOTS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(&png, keep.join(format!("{name}.png")));
            let _ = std::fs::write(keep.join(format!("{name}.html")), &dom);
        }
        Seen { dom, png }
    })
    .await
    .unwrap()
}

/// Share of the screenshot's pixels within a small distance of `rgb`.
fn share_of_colour(png: &Path, rgb: [u8; 3]) -> f64 {
    let decoder = png::Decoder::new(std::fs::File::open(png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let pixels = &buf[..info.buffer_size()];
    let near = pixels
        .chunks_exact(step)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 6))
        .count();
    near as f64 / (pixels.len() / step) as f64
}

fn hex(colour: &str) -> [u8; 3] {
    let c = colour.trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(&c[i..i + 2], 16).unwrap();
    [byte(0), byte(2), byte(4)]
}

/// A plain GET over loopback, the whole answer (head and body), bounded.
async fn http_get(url: &str, path: &str) -> String {
    tokio::time::timeout(Duration::from_secs(10), try_get(url, path))
        .await
        .expect("the page answers within 10 s")
        .unwrap()
}

/// The outages drawn on the timeline: (from, to) in Unix seconds.
fn outages(svg_or_dom: &str) -> Vec<(u64, u64)> {
    svg_or_dom
        .split("class=\"outage\"")
        .skip(1)
        .filter_map(|rest| {
            let attr = |name: &str| -> Option<u64> {
                let at = rest.find(&format!("{name}=\""))? + name.len() + 2;
                rest[at..].split('"').next()?.parse().ok()
            };
            Some((attr("data-from")?, attr("data-to")?))
        })
        .collect()
}

/// Everything secret the lab configured: database passwords and the device key.
fn secrets(lab: &Lab) -> Vec<String> {
    let f = &lab.fixture;
    let mut out = vec![
        lab.config.office_db.password.expose().to_owned(),
        lab.config.hub_db.password.expose().to_owned(),
    ];
    for db in [f.office_db(), f.hub_db()] {
        out.push(db.root_password.clone());
        out.push(db.repl_password.clone());
        out.push(db.agent_password.clone());
    }
    let key = std::fs::read_to_string(lab.config.key_path()).unwrap();
    out.extend(
        key.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned),
    );
    out.retain(|s| s.len() >= 6);
    out
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{what} holds a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_tells_office_staff_what_is_wrong_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::start(LabOptions::office_link(
        dir.path().to_path_buf(),
        AgentMode::InProcess,
    ))
    .await
    .unwrap();
    let url = lab.web_url().expect("the lab configures the page");
    eprintln!("status page at {url}");
    let secrets = secrets(&lab);
    let shots = dir.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut answers = Vec::new();
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());

    // In sync: green, nothing to do.
    let seen = look(&url, &shots, "in_sync").await;
    assert!(seen.dom.contains("<h1>In sync</h1>"), "{}", seen.dom);
    assert!(seen.dom.contains("Nothing to do."));
    let green = share_of_colour(
        &seen.png,
        hex(tether::web::page::colour(tether::health::Verdict::InSync)),
    );
    assert!(green > 0.03, "green covers {green:.3} of the screenshot");
    answers.push(seen.dom);

    // /status.json is the state document of the status socket (and MQTT).
    let json = http_get(&url, "/status.json").await;
    let body = json.split("\r\n\r\n").nth(1).unwrap();
    let served: serde_json::Value = serde_json::from_str(body).unwrap();
    let socket = lab.state().await.unwrap();
    assert_eq!(served["verdict"], socket["verdict"]);
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&served), keys(&socket));
    answers.push(json);

    // A table with a UNIQUE key on both sites, for the conflict later.
    hub.sql(
        "CREATE TABLE app.orders (id INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(16) NOT NULL UNIQUE)",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while office.count(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='orders'",
    ) < 1
    {
        assert!(Instant::now() < deadline, "the table did not reach the office");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Link down: amber, and what to check.
    let cut_at = now_s();
    lab.link.cut();
    lab.wait_verdict("link_down", Duration::from_secs(30))
        .await
        .unwrap();
    let seen = look(&url, &shots, "link_down").await;
    assert!(seen.dom.contains("<h1>Link down</h1>"), "{}", seen.dom);
    assert!(seen.dom.contains("Check the office Internet connection"));
    let amber = share_of_colour(
        &seen.png,
        hex(tether::web::page::colour(tether::health::Verdict::LinkDown)),
    );
    assert!(amber > 0.03, "amber covers {amber:.3} of the screenshot");
    answers.push(seen.dom);

    // The same UNIQUE code entered at both sites while the link is down.
    hub.sql("INSERT INTO app.orders (code) VALUES ('A-7')")
        .unwrap();
    office
        .sql("INSERT INTO app.orders (code) VALUES ('A-7')")
        .unwrap();
    lab.link.heal();
    let healed_at = now_s();
    lab.wait_verdict("needs_attention", Duration::from_secs(60))
        .await
        .unwrap();
    let seen = look(&url, &shots, "needs_attention").await;
    let dom = &seen.dom;
    assert!(dom.contains("<h1>Needs attention</h1>"), "{dom}");
    assert!(dom.contains("Call IT and tell them:"), "{dom}");
    assert!(dom.contains("duplicate key"), "{dom}");
    assert!(dom.contains("orders"), "names the table: {dom}");
    let red = share_of_colour(
        &seen.png,
        hex(tether::web::page::colour(
            tether::health::Verdict::NeedsAttention,
        )),
    );
    assert!(red > 0.03, "red covers {red:.3} of the screenshot");

    // The timeline shows the outage this test caused, in the minutes it happened.
    let drawn = outages(dom);
    assert!(
        drawn
            .iter()
            .any(|(from, to)| *from <= cut_at + 5 && to + 2 >= healed_at),
        "the cut at {cut_at} (healed {healed_at}) is not on the timeline: {drawn:?}"
    );
    assert!(
        drawn
            .iter()
            .all(|(from, to)| from < to && *to <= now_s() / 60 * 60 + 60),
        "{drawn:?}"
    );
    assert!(
        dom.contains("class=\"band link_down\"") || dom.contains("class=\"band needs_attention\"")
    );
    assert!(dom.contains("class=\"lag hub_to_office\""), "lag is drawn");
    answers.push(seen.dom);

    for path in ["/metrics", "/timeline.svg", "/status.json", "/nope"] {
        answers.push(http_get(&url, path).await);
    }
    let metrics = &answers[answers.len() - 4];
    assert!(
        metrics.contains("tether_verdict{verdict=\"needs_attention\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_link_outage_seconds_total "),
        "{metrics}"
    );
    for (i, a) in answers.iter().enumerate() {
        assert_no_secret(&format!("answer {i}"), a, &secrets);
    }

    // The history survives a restart of the agent: the outage is still drawn.
    lab.stop_agent().await;
    lab.start_agent().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let svg = loop {
        if let Ok(Ok(svg)) =
            tokio::time::timeout(Duration::from_secs(5), try_get(&url, "/timeline.svg")).await
        {
            break svg;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted agent serves no page"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        outages(&svg)
            .iter()
            .any(|(from, to)| *from <= cut_at + 5 && to + 2 >= healed_at),
        "after a restart: {svg}"
    );
}

/// A plain GET that may fail (the agent is starting).
async fn try_get(url: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(authority).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
