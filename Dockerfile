# syntax=docker/dockerfile:1
# Multi-stage build of the one binary the tests run (`kinde-m2m-operator`), into a
# distroless, non-root image. TLS is rustls (ring), so no OpenSSL; the Kubernetes client
# loads the system's CA bundle (/etc/ssl/certs/ca-certificates.crt, from distroless/cc, which
# also brings glibc) and refuses to start without one. scripts/build-image builds the same
# image from Debian packages where no base image can be pulled; tests/release.rs keeps the
# two in step.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
# Declared test targets must exist for cargo to read the manifest.
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kinde-m2m-operator \
 && cp target/release/kinde-m2m-operator /kinde-m2m-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kinde-m2m-operator /usr/local/bin/kinde-m2m-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kinde-m2m-operator"]
CMD ["run"]
