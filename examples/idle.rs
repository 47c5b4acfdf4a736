use std::sync::Arc;
use std::time::Duration;
#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let key = Arc::new(socp::crypto::PrivateKey::generate().unwrap());
    let mut conns = Vec::new();
    for i in 0..n {
        conns.push(
            socp::client::Session::connect_retrying(
                &url,
                &format!("idle{i}"),
                key.clone(),
                Duration::from_secs(60),
            )
            .await
            .unwrap(),
        );
    }
    eprintln!("connected {n}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}
