//! `resmon-log-relay`: a resource's log relay, started by the monitor,
//! never by hand (see `resmon_process::relay`). A program of its own, and
//! a small one: a monitor runs one per captured resource, so what each
//! costs in memory counts a thousand times. It reads the service's stdout
//! on fd 0 and its stderr on fd 1.
//!
//! Usage: resmon-log-relay --dir DIR --name NAME --max-size BYTES --keep N --max-line BYTES

use resmon_daemon::relay::{run, Args, Options, MAX_LINE};
use std::process::ExitCode;

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Ok(args) => ExitCode::from(run(&args) as u8),
        Err(e) => {
            eprintln!("resmon-log-relay: {e}\nusage: resmon-log-relay --dir DIR --name NAME --max-size BYTES --keep N --max-line BYTES");
            ExitCode::from(2)
        }
    }
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut dir, mut name, mut max_size, mut keep, mut max_line) = (None, None, None, None, None);
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--dir" => dir = Some(std::path::PathBuf::from(&value)),
            "--name" => name = Some(value.clone()),
            "--max-size" => max_size = Some(number("--max-size")?),
            "--keep" => keep = Some(u32::try_from(number("--keep")?).map_err(|e| e.to_string())?),
            "--max-line" => {
                max_line = Some(usize::try_from(number("--max-line")?).map_err(|e| e.to_string())?)
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("--dir is missing")?,
        name: name.ok_or("--name is missing")?,
        options: Options {
            max_size: max_size.ok_or("--max-size is missing")?,
            keep: keep.ok_or("--keep is missing")?,
        },
        max_line: max_line.unwrap_or(MAX_LINE),
    })
}
