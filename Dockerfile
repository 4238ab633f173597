# syntax=docker/dockerfile:1
# The fedcred image: one static binary on distroless, user 65532, no shell. The same image runs
# `fedcred controller` and, injected into opted-in pods, `fedcred metadata-server`.
#
# The build stage's flags are repeated in hack/build-image-binary.sh, which builds the same
# binary where Docker cannot run and checks its size; change both together.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
WORKDIR /src
# A static binary (glibc's files and dns name lookups are built into libc since 2.34, so no
# NSS modules are needed at run time) lets the runtime image carry no libraries at all.
# Fat LTO and one codegen unit: smaller and faster, at the cost of a slower image build.
# Optimized for size except the C cryptography (aws-lc): 15.5 MB instead of 22.5 MB for about
# 16 % more CPU per admission review (BENCHMARKS.md, "Image build profile").
ENV CARGO_PROFILE_RELEASE_LTO=fat \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
    CARGO_PROFILE_RELEASE_PACKAGE_AWS_LC_SYS_OPT_LEVEL=3 \
    RUSTFLAGS="-C target-feature=+crt-static"
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    case "${TARGETARCH:-amd64}" in \
      amd64) target=x86_64-unknown-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
 && cargo build --locked --release --target "$target" --bin fedcred \
 && install -D -m 0755 "target/$target/release/fedcred" /out/fedcred \
 && /out/fedcred --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/fedcred /usr/local/bin/fedcred
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fedcred"]
CMD ["controller"]
