# Multi-stage build of sysmos-notify. librdkafka is built from the bundled sources (make + gcc).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin sysmos-notify

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sysmos-notify /usr/local/bin/sysmos-notify
COPY deploy/sysmos-notify.toml /etc/sysmos-notify/config.toml
USER 65534
EXPOSE 9464
ENTRYPOINT ["sysmos-notify"]
CMD ["run", "--config", "/etc/sysmos-notify/config.toml"]
