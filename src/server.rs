//! The HTTP/1.1 accept loop, with the limits that keep slow and abusive clients from holding
//! the server: a deadline for each request head (slowloris, idle kept-alive connections) and a
//! cap on its size (431). `axum::serve` sets neither (it gives hyper no timer, so hyper's
//! own header timeout never fires), hence hyper's connection builder here. apt speaks
//! HTTP/1.1 only, so HTTP/2 is not offered.

use aptgate_config::ServerConfig;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `app` on `listener` until `shutdown` resolves, then lets every connection finish
/// the request it is serving.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let builder = connection_builder(limits);
    // Connections hold a receiver each; `closed()` on the sender resolves when all are gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // back off briefly instead of spinning, and keep serving.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Without TCP_NODELAY, a small response written as headers + body waits on the
        // client's delayed ACK (~40 ms): two orders of magnitude fewer small requests per second.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    // Errors are clients hanging up, timing out or sending garbage: theirs.
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = stop.changed() => connection.as_mut().graceful_shutdown(),
                }
            }
            drop(stop);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    stop_tx.closed().await;
    Ok(())
}

fn connection_builder(limits: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(
            (!limits.header_read_timeout.is_zero()).then_some(limits.header_read_timeout),
        )
        .max_header_size(limits.max_header_bytes);
    builder
}
