//! The LED task: renders the health on the board every 100 ms (blinking needs time to
//! pass) and turns button gestures into commands. Dark when the agent stops.
//!
//! The simulated board (`board.backend = "sim"`) is a Unix socket: each client receives a
//! line `G1 A0 R0` whenever the LEDs change and may send `short` or `long` for the
//! button. A client that loses the socket must show the board dark.

use std::path::PathBuf;
use std::time::Duration;

use tether_board::patterns::{BoardVerdict, LedState, SELF_TEST, leds_with_self_test};
use tether_board::{Button, ButtonAction};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Verdict};
use crate::tunnel::TunnelCommand;

const FRAME: Duration = Duration::from_millis(100);

/// The board's view of a verdict.
pub fn board_verdict(health: Option<&Health>) -> BoardVerdict {
    match health.map(|h| h.verdict) {
        Some(Verdict::InSync) => BoardVerdict::InSync,
        Some(Verdict::CatchingUp) => BoardVerdict::CatchingUp,
        Some(Verdict::LinkDown) => BoardVerdict::LinkDown,
        Some(Verdict::NeedsAttention) => BoardVerdict::NeedsAttention,
        None => BoardVerdict::Dark,
    }
}

/// Runs the simulated board until shutdown, then shows it dark.
pub async fn run_sim(
    path: PathBuf,
    health: watch::Receiver<Option<Health>>,
    commands: mpsc::Sender<TunnelCommand>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let (frames, _) = broadcast::channel::<LedState>(16);
    let (gestures_tx, mut gestures) = mpsc::channel::<ButtonAction>(8);
    let origin = Instant::now();
    let mut self_test_until: Option<Duration> = None;
    let mut last = None;
    let mut ticker = tokio::time::interval(FRAME);
    let current = std::sync::Arc::new(std::sync::Mutex::new(LedState::OFF));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            Some(g) = gestures.recv() => match g {
                ButtonAction::SelfTest => self_test_until = Some(origin.elapsed() + SELF_TEST),
                ButtonAction::ForceReconnect => { let _ = commands.try_send(TunnelCommand::Reconnect); }
            },
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    let mut rx = frames.subscribe();
                    let now = *current.lock().unwrap_or_else(|e| e.into_inner());
                    let gestures_tx = gestures_tx.clone();
                    let stop = shutdown.clone();
                    tokio::spawn(async move {
                        let (r, mut w) = stream.into_split();
                        let mut lines = BufReader::new(r).lines();
                        if w.write_all(format!("{}\n", tether_board::sim::encode(now)).as_bytes()).await.is_err() {
                            return;
                        }
                        loop {
                            tokio::select! {
                                f = rx.recv() => match f {
                                    Ok(s) => if w.write_all(format!("{}\n", tether_board::sim::encode(s)).as_bytes()).await.is_err() { return },
                                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                                    Err(_) => return,
                                },
                                l = lines.next_line() => match l {
                                    Ok(Some(l)) => {
                                        let g = match l.trim() {
                                            "short" => Some(ButtonAction::SelfTest),
                                            "long" => Some(ButtonAction::ForceReconnect),
                                            _ => None,
                                        };
                                        if let Some(g) = g { let _ = gestures_tx.send(g).await; }
                                    }
                                    _ => return,
                                },
                                () = stop.cancelled() => {
                                    let _ = w.write_all(format!("{}\n", tether_board::sim::encode(LedState::OFF)).as_bytes()).await;
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        }
        let verdict = board_verdict(health.borrow().as_ref());
        let state = leds_with_self_test(verdict, origin.elapsed(), self_test_until);
        if last != Some(state) {
            last = Some(state);
            *current.lock().unwrap_or_else(|e| e.into_inner()) = state;
            let _ = frames.send(state);
        }
    }
    let _ = frames.send(LedState::OFF);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Debounces raw button samples for a real board (GPIO), for use by its poller.
pub fn new_button() -> Button {
    Button::new(tether_board::button::DEBOUNCE)
}

/// Runs real LEDs and the button on Linux GPIO lines (found by name) until shutdown, then
/// turns every LED off.
#[cfg(feature = "gpio")]
pub async fn run_gpio(
    board: crate::config::Board,
    health: watch::Receiver<Option<Health>>,
    commands: mpsc::Sender<TunnelCommand>,
    shutdown: CancellationToken,
) -> Result<(), tether_board::gpio::GpioError> {
    use embedded_hal::digital::InputPin;
    use tether_board::Polarity;
    use tether_board::gpio::GpioPin;

    let chip = board.chip.as_deref();
    let polarity = |l: &crate::config::Line| {
        if l.active_low {
            Polarity::ActiveLow
        } else {
            Polarity::ActiveHigh
        }
    };
    let mut leds = tether_board::Board::new(
        (
            GpioPin::output(&board.green.line, chip)?,
            polarity(&board.green),
        ),
        (
            GpioPin::output(&board.amber.line, chip)?,
            polarity(&board.amber),
        ),
        (
            GpioPin::output(&board.red.line, chip)?,
            polarity(&board.red),
        ),
    );
    let mut button_pin = GpioPin::input(&board.button.line, chip)?;
    let button_active_low = board.button.active_low;
    let mut button = new_button();
    let origin = Instant::now();
    let mut self_test_until = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut last = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = origin.elapsed();
        if let Ok(high) = button_pin.is_high() {
            match button.sample(high != button_active_low, now) {
                Some(ButtonAction::SelfTest) => self_test_until = Some(now + SELF_TEST),
                Some(ButtonAction::ForceReconnect) => {
                    let _ = commands.try_send(TunnelCommand::Reconnect);
                }
                None => {}
            }
        }
        let state = leds_with_self_test(
            board_verdict(health.borrow().as_ref()),
            now,
            self_test_until,
        );
        if last != Some(state) {
            last = Some(state);
            if let Err(e) = leds.show(state) {
                tracing::warn!(error = %e, "cannot drive the LEDs");
            }
        }
    }
    let _ = leds.all_off();
    Ok(())
}
