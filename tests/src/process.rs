//! `aptgate serve` as a real process, for tests that kill it (`SIGKILL`) and start it again.

use aptgate_config::Config;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    pub config_path: PathBuf,
    pub url: String,
    child: Child,
}

impl ServerProcess {
    /// Writes `config` to `config_path` and starts `aptgate serve` with it on a free port;
    /// returns once it logs that it listens.
    pub fn start(config: &Config, config_path: PathBuf) -> ServerProcess {
        let mut config = config.clone();
        config.server.listen = "127.0.0.1:0".parse().expect("address");
        fs_err::write(
            &config_path,
            toml::to_string(&config).expect("the configuration serializes"),
        )
        .expect("write the configuration");
        let mut command = crate::app::aptgate_command();
        command.args([
            "--config",
            config_path.to_str().expect("UTF-8 path"),
            "serve",
        ]);
        ServerProcess::spawn(command, config_path)
    }

    /// Starts `command`, an `aptgate … serve` however it is wrapped (another user, a
    /// packaged configuration), and returns once it logs that it listens.
    pub fn spawn(mut command: std::process::Command, config_path: PathBuf) -> ServerProcess {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aptgate serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining after start so the server never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut log = Vec::new();
        let addr = loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                let _ = child.kill();
                panic!("aptgate did not start:\n{}", log.join("\n"));
            };
            log.push(line.clone());
            if line.contains("listening") {
                if let Some(rest) = line.split("addr=").nth(1) {
                    break rest
                        .split_whitespace()
                        .next()
                        .expect("an address")
                        .to_owned();
                }
            }
        };
        ServerProcess {
            config_path,
            url: format!("http://{addr}"),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `SIGKILL`: no shutdown, no cleanup, like a crash or power loss of the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
