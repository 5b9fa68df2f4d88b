-- wrk: a bulk of 100 seed-experiment customers per request (the bulk intake row).
local items = {}
for i = 1, 100 do
  items[i] = string.format(
    '{"customer":{"email":"bulk-jdoe%d@example.com","firstname":"Jane-bulk%d",' ..
    '"lastname":"Doe-bulk%d","addresses":[{"defaultShipping":true,"defaultBilling":true,' ..
    '"firstname":"Jane","lastname":"Doe","region":{"regionCode":"NY","region":"New York",' ..
    '"regionId":43},"postcode":"10755","street":["123 Oak Ave"],"city":"Purchase",' ..
    '"telephone":"512-555-1111","countryId":"US"}]},"password":"Password1"}', i, i, i)
end
wrk.method = "POST"
wrk.body = "[" .. table.concat(items, ",") .. "]"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-admin-token"
