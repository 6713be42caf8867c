//! `cargo xtask lab`: a complete two-site setup on this machine (being written).

use anyhow::{Result, bail};

pub fn run(_headless: bool) -> Result<()> {
    bail!("the lab is not assembled yet")
}
