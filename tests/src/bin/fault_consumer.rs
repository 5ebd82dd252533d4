//! A consumer process for the SIGKILL fault test: consumes `UserRegistered` as group `$GROUP` on
//! `$RABBITMQ_URL` with prefetch 50, slowly, printing `handled <user_id>` after each handler; the test kills it
//! with SIGKILL mid-batch.

use std::io::Write;
use std::time::Duration;

use warren::{Bus, HandlerError};
use warren_contracts::gametrade::v1::UserRegistered;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let group = std::env::var("GROUP")?;
    let bus = Bus::from_env().await?;
    let _subscription = UserRegistered::subscribe(&bus, &group)
        .prefetch(50)
        .handle(|event: UserRegistered, _| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut out = std::io::stdout().lock();
            writeln!(out, "handled {}", event.user_id)?;
            out.flush()?;
            Ok::<_, HandlerError>(())
        })
        .await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
