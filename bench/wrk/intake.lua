-- wrk: one seed-experiment customer per request to the async endpoint (the intake rows).
wrk.method = "POST"
wrk.body = "{\"customer\":{\"email\":\"async-jdoe1@example.com\",\"firstname\":\"Jane-async1\",\"lastname\":\"Doe-async1\",\"addresses\":[{\"defaultShipping\":true,\"defaultBilling\":true,\"firstname\":\"Jane\",\"lastname\":\"Doe\",\"region\":{\"regionCode\":\"NY\",\"region\":\"New York\",\"regionId\":43},\"postcode\":\"10755\",\"street\":[\"123 Oak Ave\"],\"city\":\"Purchase\",\"telephone\":\"512-555-1111\",\"countryId\":\"US\"}]},\"password\":\"Password1\"}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-admin-token"
