//! Scenarios A and B: nginx as the upstream (`return 200` with a small JSON body) and nginx
//! as a reverse proxy in front of it (a static header, keepalive to the upstream). One worker,
//! no master process, no access log: the same shape as the proxies it is compared with.

use std::path::Path;

use airlock_e2e::Process;
use anyhow::Result;

use crate::procs::spawn_pinned;

/// The upstream's answer to every request.
pub const UPSTREAM_BODY: &str =
    r#"{"ok":true,"id":"ord_4242","items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}]}"#;

const COMMON: &str = "daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid nginx.pid;
events { worker_connections 4096; }
";

/// nginx answering `UPSTREAM_BODY` on `port`.
pub fn upstream(cpus: &str, port: u16, dir: &Path) -> Result<Process> {
    let conf = format!(
        "{COMMON}http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type application/json;
      return 200 '{UPSTREAM_BODY}';
    }}
  }}
}}
"
    );
    start("nginx-upstream", cpus, &conf, dir)
}

/// nginx proxying `port` to the upstream on `upstream_port`, adding one header.
pub fn proxy(cpus: &str, port: u16, upstream_port: u16, dir: &Path) -> Result<Process> {
    let conf = format!(
        "{COMMON}http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{
    server 127.0.0.1:{upstream_port};
    keepalive 128;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Bench-Proxy nginx;
    }}
  }}
}}
"
    );
    start("nginx-proxy", cpus, &conf, dir)
}

fn start(name: &str, cpus: &str, conf: &str, dir: &Path) -> Result<Process> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(&prefix)?;
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    spawn_pinned(
        name,
        cpus,
        Path::new(&nginx_binary()),
        &[
            "-p".into(),
            prefix.display().to_string(),
            "-c".into(),
            conf_path.display().to_string(),
        ],
        &[],
        dir,
    )
}

/// Debian installs nginx in /usr/sbin, which is not on every user's PATH.
fn nginx_binary() -> String {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "nginx".into()
}
