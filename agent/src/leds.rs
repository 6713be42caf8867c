//! The LED task: renders the health on the board every 100 ms (blinking needs time to
//! pass) and turns button gestures into commands. Dark when the agent stops, when the
//! health loop stops feeding it (a hung loop must not keep a green LED lit), and on a
//! panic (see [`install_panic_hook`]).
//!
//! The simulated board (`board.backend = "sim"`) is a Unix socket: each client receives a
//! line `G1 A0 R0` whenever the LEDs change and may send `short` or `long` for the
//! button. A client that loses the socket must show the board dark.

use std::path::PathBuf;
use std::sync::Mutex;
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

/// How long the board keeps showing a verdict the health loop has not refreshed. The loop
/// sends at least every 250 ms; past this it is hung or gone and the board goes dark.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

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

/// What the board shows, from the latest health, its freshness, button gestures and
/// time: the one step both backends share. Pure: time comes in as an argument.
#[derive(Debug, Default)]
pub struct LedRenderer {
    self_test_until: Option<Duration>,
    refreshed_at: Option<Duration>,
}

impl LedRenderer {
    /// A button gesture at `now`: a self-test, or a reconnect request for the tunnel.
    pub fn gesture(
        &mut self,
        action: ButtonAction,
        now: Duration,
        commands: &mpsc::Sender<TunnelCommand>,
    ) {
        match action {
            ButtonAction::SelfTest => self.self_test_until = Some(now + SELF_TEST),
            ButtonAction::ForceReconnect => {
                let _ = commands.try_send(TunnelCommand::Reconnect);
            }
        }
    }

    /// The LEDs at `now`; `refreshed` says the health loop sent a new health since the
    /// last frame. Without a refresh for [`STALE_AFTER`], the verdict is dark.
    pub fn frame(&mut self, health: Option<&Health>, refreshed: bool, now: Duration) -> LedState {
        if refreshed {
            self.refreshed_at = Some(now);
        }
        let fresh = self
            .refreshed_at
            .is_some_and(|at| now.saturating_sub(at) <= STALE_AFTER);
        let verdict = if fresh {
            board_verdict(health)
        } else {
            BoardVerdict::Dark
        };
        leds_with_self_test(verdict, now, self.self_test_until)
    }

    /// [`LedRenderer::frame`] from the health loop's channel (a closed channel is never fresh).
    pub fn frame_from(
        &mut self,
        health: &mut watch::Receiver<Option<Health>>,
        now: Duration,
    ) -> LedState {
        let refreshed = health.has_changed().unwrap_or(false);
        let current = health.borrow_and_update();
        self.frame(current.as_ref(), refreshed, now)
    }
}

/// What turns the real LEDs off from the panic hook; set by the GPIO backend.
static ON_PANIC: Mutex<Option<Box<dyn FnMut() + Send>>> = Mutex::new(None);

/// Registers what turns the LEDs off if the process panics (replacing any earlier one).
pub fn darken_on_panic(off: impl FnMut() + Send + 'static) {
    *ON_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(off));
}

/// Turns the LEDs off through what [`darken_on_panic`] registered, if anything; never
/// blocks (a panic while the lock is held skips it rather than deadlock).
pub fn darken_now() {
    if let Ok(mut guard) = ON_PANIC.try_lock()
        && let Some(off) = guard.as_mut()
    {
        off();
    }
}

/// Makes any panic, in any task, turn the LEDs off and end the process (after the usual
/// report), so the board is dark and systemd restarts the agent instead of a half-dead
/// agent showing green. Installed by `tether run` only. Under systemd the report goes to
/// the journal at priority err (see `logging`).
pub fn install_panic_hook() {
    let report = std::panic::take_hook();
    let journal = crate::logging::stderr_style() == crate::logging::Style::Journal;
    std::panic::set_hook(Box::new(move |info| {
        if journal {
            crate::logging::fatal(&format!("tether: {info}"));
        } else {
            report(info);
        }
        darken_now();
        std::process::abort();
    }));
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
    let mut renderer = LedRenderer::default();
    let mut health = health;
    let mut last = None;
    let mut ticker = tokio::time::interval(FRAME);
    let current = std::sync::Arc::new(std::sync::Mutex::new(LedState::OFF));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            Some(g) = gestures.recv() => renderer.gesture(g, origin.elapsed(), &commands),
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
        let state = renderer.frame_from(&mut health, origin.elapsed());
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
    let mut dark = leds.clone();
    darken_on_panic(move || {
        let _ = dark.all_off();
    });
    let mut button_pin = GpioPin::input(&board.button.line, chip)?;
    let button_active_low = board.button.active_low;
    let mut button = new_button();
    let origin = Instant::now();
    let mut renderer = LedRenderer::default();
    let mut health = health;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut last = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = origin.elapsed();
        if let Ok(high) = button_pin.is_high()
            && let Some(g) = button.sample(high != button_active_low, now)
        {
            renderer.gesture(g, now, &commands);
        }
        let state = renderer.frame_from(&mut health, now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Stamp;
    use crate::health::{HealthMachine, HealthSettings};

    fn in_sync_health() -> Health {
        let settings = HealthSettings {
            settle: Duration::from_secs(2),
            alert_after: Duration::from_secs(60),
            lag_ok: Duration::from_secs(5),
        };
        let start = Stamp {
            mono: Duration::ZERO,
            wall: std::time::SystemTime::UNIX_EPOCH,
        };
        let mut h = HealthMachine::new(settings, start).health().clone();
        h.verdict = Verdict::InSync;
        h
    }

    #[test]
    fn a_health_loop_that_stops_refreshing_turns_the_board_dark() {
        let health = in_sync_health();
        let mut renderer = LedRenderer::default();
        let green = renderer.frame(Some(&health), true, Duration::ZERO);
        assert!(green.green, "fresh in_sync shows green: {green:?}");
        let still = renderer.frame(Some(&health), false, STALE_AFTER);
        assert!(still.green, "within the bound the verdict holds");
        let hung = renderer.frame(Some(&health), false, STALE_AFTER + FRAME);
        assert_eq!(
            hung,
            LedState::OFF,
            "a hung health loop must not keep green lit"
        );
        let back = renderer.frame(Some(&health), true, STALE_AFTER * 2);
        assert!(back.green, "a refresh brings the verdict back");
    }

    #[test]
    fn nothing_sent_yet_is_dark_and_a_short_press_lights_everything() {
        let (tx, _rx) = mpsc::channel(1);
        let mut renderer = LedRenderer::default();
        assert_eq!(renderer.frame(None, false, Duration::ZERO), LedState::OFF);
        renderer.gesture(ButtonAction::SelfTest, Duration::ZERO, &tx);
        assert_eq!(
            renderer.frame(None, false, Duration::from_secs(1)),
            LedState::ALL
        );
        assert_eq!(
            renderer.frame(None, false, SELF_TEST + FRAME),
            LedState::OFF
        );
    }

    #[test]
    fn a_long_press_asks_the_tunnel_to_reconnect() {
        let (tx, mut rx) = mpsc::channel(1);
        LedRenderer::default().gesture(ButtonAction::ForceReconnect, Duration::ZERO, &tx);
        assert_eq!(rx.try_recv().ok(), Some(TunnelCommand::Reconnect));
    }

    #[tokio::test(start_paused = true)]
    async fn the_channel_decides_freshness() {
        let (tx, mut rx) = watch::channel(None);
        let mut renderer = LedRenderer::default();
        tx.send_replace(Some(in_sync_health()));
        assert!(renderer.frame_from(&mut rx, Duration::ZERO).green);
        assert!(renderer.frame_from(&mut rx, Duration::from_secs(1)).green);
        assert_eq!(
            renderer.frame_from(&mut rx, Duration::from_secs(3)),
            LedState::OFF
        );
        drop(tx);
        assert_eq!(
            renderer.frame_from(&mut rx, Duration::from_secs(4)),
            LedState::OFF
        );
    }
}
