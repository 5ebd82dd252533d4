//! An e-mail service for the `warren` CLI's walkthrough (README, "The command line"): it welcomes every
//! `UserRegistered`, or, started with `--broken`, dead-letters each one as an outage would ("SMTP relay
//! refused"), so that `warren dlq list` and `warren dlq replay` have something to show. Runs until Ctrl-C.
//!
//! ```text
//! cargo run -p warren-cli --example mailer -- --broken
//! ```

use warren::{Bus, Context, HandlerError, Outcome, Subscriber};
use warren_contracts::gametrade::v1::UserRegistered;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broken = std::env::args().any(|arg| arg == "--broken");
    let bus = Bus::from_env().await?;
    let subscription = Subscriber::<UserRegistered>::new(&bus, "mailer")
        .handle(move |user: UserRegistered, _: Context| async move {
            if broken {
                return Ok::<_, HandlerError>(Outcome::DeadLetter { reason: "SMTP relay refused".into() });
            }
            println!("welcome mail sent to {} <{}>", user.username, user.email);
            Ok(Outcome::Ack)
        })
        .await?;
    eprintln!(
        "mailer consuming {} ({}); Ctrl-C to stop",
        subscription.queue(),
        if broken { "broken" } else { "working" }
    );
    warren::terminated().await;
    subscription.stop().await;
    Ok(())
}
