//! Linux LED class backend: an [`OutputPin`] over `/sys/class/leds/NAME/brightness`.
//!
//! OpenWrt exposes the router's front-panel LEDs through the kernel's LED class, one directory
//! per LED named like `green:status` or `tp-link:orange:wps` (the name goes in the agent's
//! config). "High" writes the LED's `max_brightness`, "low" writes `0`. Opening the LED sets its
//! kernel `trigger` to `none`, otherwise a trigger (heartbeat, netdev, ...) would keep changing
//! the brightness behind the driver's back.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorKind, ErrorType, OutputPin};

/// Where the kernel publishes LED class devices.
pub const DEFAULT_ROOT: &str = "/sys/class/leds";

/// Why an LED of the LED class cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// The configured name is empty or would leave the LED directory (`/`, `.`, `..`, NUL).
    #[error("invalid LED name {0:?}: expected a name like `green:status` from /sys/class/leds")]
    InvalidName(String),
    /// There is no LED of that name.
    #[error("no LED named {name:?} in {root}")]
    NotFound {
        /// The configured LED name.
        name: String,
        /// The LED class directory that was searched.
        root: PathBuf,
    },
    /// Reading or writing one of the LED's attribute files failed.
    #[error("{path}: {source}")]
    Io {
        /// The attribute file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `max_brightness` does not hold a positive integer, so "on" cannot be written.
    #[error("{path}: max_brightness {value:?} is not a positive integer")]
    MaxBrightness {
        /// The attribute file.
        path: PathBuf,
        /// What it contained.
        value: String,
    },
}

impl embedded_hal::digital::Error for SysfsError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// One LED of the kernel's LED class, used as an output pin.
#[derive(Debug, Clone)]
pub struct SysfsLed {
    brightness: PathBuf,
    on_value: String,
}

impl SysfsLed {
    /// Opens the LED `name` under [`DEFAULT_ROOT`].
    ///
    /// # Errors
    /// See [`open_in`](Self::open_in).
    pub fn open(name: &str) -> Result<Self, SysfsError> {
        Self::open_in(DEFAULT_ROOT, name)
    }

    /// Opens the LED `name` under the LED class directory `root` (tests pass a temporary
    /// directory), reads its `max_brightness` and sets its `trigger` to `none` when it has one.
    /// The LED is not switched; the first write decides.
    ///
    /// # Errors
    /// [`SysfsError::InvalidName`] for a name that is not a single path component,
    /// [`SysfsError::NotFound`] when there is no such LED, [`SysfsError::MaxBrightness`] or
    /// [`SysfsError::Io`] when its attributes cannot be read or the trigger cannot be set.
    pub fn open_in(root: impl AsRef<Path>, name: &str) -> Result<Self, SysfsError> {
        let root = root.as_ref();
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(SysfsError::InvalidName(name.to_owned()));
        }
        let dir = root.join(name);
        if !dir.is_dir() {
            return Err(SysfsError::NotFound {
                name: name.to_owned(),
                root: root.to_path_buf(),
            });
        }

        let max_path = dir.join("max_brightness");
        let raw = std::fs::read_to_string(&max_path).map_err(|source| SysfsError::Io {
            path: max_path.clone(),
            source,
        })?;
        let on_value = match raw.trim().parse::<u32>() {
            Ok(max) if max > 0 => max.to_string(),
            _ => {
                return Err(SysfsError::MaxBrightness {
                    path: max_path,
                    value: raw.trim().to_owned(),
                })
            }
        };

        let trigger = dir.join("trigger");
        if trigger.exists() {
            write_attribute(&trigger, "none")?;
        }

        Ok(SysfsLed {
            brightness: dir.join("brightness"),
            on_value,
        })
    }

    /// The `brightness` attribute file this LED writes.
    pub fn brightness_path(&self) -> &Path {
        &self.brightness
    }
}

/// Writes `value` to an existing attribute file (never creates one: a missing attribute is an
/// error, not a new file).
fn write_attribute(path: &Path, value: &str) -> Result<(), SysfsError> {
    let io = |source| SysfsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    file.write_all(value.as_bytes()).map_err(io)
}

impl ErrorType for SysfsLed {
    type Error = SysfsError;
}

impl OutputPin for SysfsLed {
    fn set_low(&mut self) -> Result<(), SysfsError> {
        write_attribute(&self.brightness, "0")
    }

    fn set_high(&mut self) -> Result<(), SysfsError> {
        write_attribute(&self.brightness, &self.on_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::led::{Status, StatusLed};
    use std::fs;

    /// Makes `root/name` look like an LED class device.
    fn fake_led(root: &Path, name: &str, max: &str, trigger: Option<&str>) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("max_brightness"), max).unwrap();
        fs::write(dir.join("brightness"), "0\n").unwrap();
        if let Some(t) = trigger {
            fs::write(dir.join("trigger"), t).unwrap();
        }
        dir
    }

    #[test]
    fn high_writes_max_brightness_and_low_writes_zero() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_led(root.path(), "green:status", "255\n", None);
        let mut led = SysfsLed::open_in(root.path(), "green:status").unwrap();
        led.set_high().unwrap();
        assert_eq!(fs::read_to_string(dir.join("brightness")).unwrap(), "255");
        led.set_low().unwrap();
        assert_eq!(fs::read_to_string(dir.join("brightness")).unwrap(), "0");
        assert_eq!(led.brightness_path(), dir.join("brightness"));
    }

    #[test]
    fn opening_disables_the_kernel_trigger() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_led(
            root.path(),
            "tp-link:orange:wps",
            "1",
            Some("none [timer] netdev"),
        );
        SysfsLed::open_in(root.path(), "tp-link:orange:wps").unwrap();
        assert_eq!(fs::read_to_string(dir.join("trigger")).unwrap(), "none");
    }

    #[test]
    fn drives_the_status_led_driver() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_led(root.path(), "red:alert", "1", None);
        let pin = SysfsLed::open_in(root.path(), "red:alert").unwrap();
        let mut led = StatusLed::new(pin);
        led.show(Status::Infected, 0).unwrap();
        assert_eq!(fs::read_to_string(dir.join("brightness")).unwrap(), "1");
        led.poll(100).unwrap();
        assert_eq!(fs::read_to_string(dir.join("brightness")).unwrap(), "0");
    }

    #[test]
    fn unknown_led_is_reported_with_its_name() {
        let root = tempfile::tempdir().unwrap();
        let err = SysfsLed::open_in(root.path(), "blue:missing").unwrap_err();
        assert!(matches!(err, SysfsError::NotFound { ref name, .. } if name == "blue:missing"));
        assert!(err.to_string().contains("blue:missing"));
    }

    #[test]
    fn names_that_leave_the_led_directory_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        fake_led(root.path(), "ok", "1", None);
        for bad in ["", ".", "..", "../ok", "a/b", "nul\0"] {
            let err = SysfsLed::open_in(root.path(), bad).unwrap_err();
            assert!(matches!(err, SysfsError::InvalidName(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_max_brightness_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        fake_led(root.path(), "zero", "0", None);
        fake_led(root.path(), "junk", "bright", None);
        for name in ["zero", "junk"] {
            let err = SysfsLed::open_in(root.path(), name).unwrap_err();
            assert!(
                matches!(err, SysfsError::MaxBrightness { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn a_vanished_brightness_file_is_an_error_not_a_new_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_led(root.path(), "gone", "1", None);
        let mut led = SysfsLed::open_in(root.path(), "gone").unwrap();
        fs::remove_file(dir.join("brightness")).unwrap();
        let err = led.set_high().unwrap_err();
        assert!(matches!(err, SysfsError::Io { .. }));
        assert!(!dir.join("brightness").exists());
    }
}
