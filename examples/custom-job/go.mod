module kubetrain.io/examples/custom-job

go 1.26
