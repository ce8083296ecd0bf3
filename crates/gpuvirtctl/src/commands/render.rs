//! `gpuvirtctl xml|qemu-args TARGET [--x-vga]`: Manager.RenderHostdev, printed as libvirt XML or
//! as QEMU arguments (one per line, ready for a shell's `$(...)` or a script's array). May
//! import: crate::client, crate::errors.

use crate::client::{options, Ctx};
use crate::errors::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Xml,
    QemuArgs,
}

pub async fn run(ctx: &Ctx<'_>, target: &str, x_vga: bool, output: Output) -> Result<(), CliError> {
    let opts = options(&[("x-vga", x_vga.then_some(true))]);
    let (xml, args) = ctx
        .manager()
        .await?
        .render_hostdev(target, opts)
        .await
        .map_err(|e| ctx.api_error(e))?;
    match output {
        Output::Xml => {
            out!("{xml}")?;
            if !xml.ends_with('\n') {
                outln!()?;
            }
        }
        Output::QemuArgs => {
            for arg in &args {
                outln!("{arg}")?;
            }
        }
    }
    Ok(())
}
