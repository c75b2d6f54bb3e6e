-- wrk script: one single-row JSON prediction per request, with TorchServe's token.
wrk.method = "POST"
wrk.body = "[5.1, 3.5, 1.4, 0.2]"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
