//! Run the worker's handler once, outside Lambda: an `SqsEvent` (JSON) on standard input, the
//! batch answer (JSON) on standard output, the configuration from the environment as the
//! function reads it (`STORE=dynamodb` for durable stores). `WORKER_DEADLINE_SECS` (default 30)
//! stands in for the Lambda deadline.
//!
//! The crash test runs it as a child process and kills it mid-sync; it is also handy to replay
//! a sample from `events/retry-worker/` against the local sandbox.

use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::sqs::SqsEvent;
use chrono::{TimeDelta, Utc};
use cosell_adapters::AwsClients;
use cosell_runtime::{Clients, Connector, Deployed, StoreConfig, Stores};
use retry_worker::{App, Config, Invocation, RandomJitter, SqsWorkerQueues, handle};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("retry-worker configuration")?;
    let StoreConfig::DynamoDb { table_name, .. } = &config.sync.store else {
        anyhow::bail!("run_once needs STORE=dynamodb: in-memory stores die with the process");
    };
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the event from standard input")?;
    let event: SqsEvent = serde_json::from_str(&input).context("the input is not an SqsEvent")?;
    let deadline_secs: u64 = std::env::var("WORKER_DEADLINE_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(30);

    let clients = Clients::<Deployed>::from_config(&config.sync).context("the HTTP clients")?;
    let aws = AwsClients::from_env().await;
    let queues = SqsWorkerQueues::new(aws.sqs.clone(), &config.retry_queue_url, &config.dlq_url);
    let stores = Stores::dynamo(&aws, table_name, &config.retry_queue_url);
    let mapping = config.sync.mapping.clone();
    let connector = Connector::new(clients, stores, mapping, config.sync_settings());
    let app = App::new(connector, queues, &config);

    let now = Utc::now();
    let deadline =
        now + TimeDelta::from_std(Duration::from_secs(deadline_secs)).unwrap_or(TimeDelta::zero());
    let invocation = Invocation { now, deadline };
    let answer = handle(&event, &app, &invocation, &RandomJitter).await;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}
