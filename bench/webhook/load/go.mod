module fedcred.local/bench/webhook/load

go 1.25

require (
	github.com/evanphx/json-patch/v5 v5.9.11
	golang.org/x/sys v0.36.0
)
